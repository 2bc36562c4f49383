"""Bandwidth forecasting and codec control for each client's upload.

- series.py      link time series: synthetic datacenter/internet links, the QoE scenarios,
                 trace files (`time_s throughput_mbit_s`)
- windows.py     10-step windows, the 70/15/15 split, normalisation from the training split
- baselines.py   last value, EWMA, harmonic mean, recursive least squares
- metrics.py     mse, mae, mape, accuracy (within 2%), within 10%
- targets.py     what the LSTM outputs (residual, the seed's level, window) and back
- predictor.py   the LSTM forecaster, its training and saved form
- ladder.py      a share of the model's bytes → a concrete codec
- environment.py a client's uploads over a replayed trace, the deadline, the reward
- controllers.py ddqn, rule, robust-rule, oracle (and fixed codecs, random) from upload history
- agent.py       the Double DQN, its training and saved form
- evaluation.py  the comparisons on held-out data
- plots.py, cli.py  the PNGs and the `fogfl bandwidth` / `fogfl agent` commands
"""
