"""`python -m fogfl.links SPEC --ports FILE --counters FILE`: the link emulator process."""

from fogfl.links.runner import main

raise SystemExit(main())
