from fogfl.cli import main

main()
