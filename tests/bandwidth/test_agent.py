"""The Double DQN: its network's shape, the targets (the online network picks, the target
network values), the replay buffer, a tiny training and its saved form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fogfl.bandwidth.agent import (
    DDQNAgent,
    DDQNSettings,
    QNetwork,
    ReplayBuffer,
    double_dqn_targets,
    train_agent,
)
from fogfl.bandwidth.controllers import DDQNController
from fogfl.bandwidth.environment import EnvironmentSettings, LinkTrace
from fogfl.errors import BandwidthError


def test_the_seed_network() -> None:
    net = QNetwork(4).eval()
    linears = [m for m in net.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (4, 128), (128, 64), (64, 32), (32, 10),
    ]  # fmt: skip
    assert net(torch.zeros(3, 4)).shape == (3, 10)


def test_double_dqn_targets_by_hand() -> None:
    next_online = torch.tensor([[1.0, 5.0, 2.0], [0.0, 0.0, 9.0]])
    next_target = torch.tensor([[7.0, 3.0, 8.0], [1.0, 2.0, 4.0]])
    rewards, dones = torch.tensor([0.5, -1.0]), torch.tensor([0.0, 1.0])
    targets = double_dqn_targets(rewards, dones, next_online, next_target, gamma=0.9)
    # Row 1: the online network picks action 1, the target network values it at 3 (not its
    # own maximum 8, which plain DQN would take). Row 2 ends the episode: the reward alone.
    assert targets.tolist() == pytest.approx([0.5 + 0.9 * 3.0, -1.0])


def test_replay_buffer_keeps_the_last_transitions() -> None:
    buffer = ReplayBuffer(3, 2)
    for i in range(5):
        buffer.add(np.full(2, i), i, float(i), np.full(2, i + 1), i == 4)
    assert buffer.size == 3
    states, actions, rewards, _, _ = buffer.sample(50, np.random.default_rng(0))
    assert set(actions.tolist()) == {2, 3, 4}
    assert torch.equal(states[:, 0], rewards)


def test_tiny_training_runs_decays_epsilon_and_round_trips(tmp_path: Path) -> None:
    trace = LinkTrace("t", np.arange(60.0), 1.0 + np.abs(np.sin(np.arange(60.0) / 7)))
    environment = EnvironmentSettings(rounds=8)
    settings = DDQNSettings(episodes=12, batch_size=16, epsilon_decay=0.5, seed=1)
    agent, report = train_agent([trace], environment, settings)
    assert report.episodes == 12 and len(report.episode_rewards) == 12
    assert report.final_epsilon == pytest.approx(max(0.01, 0.5**12))
    assert report.learning_steps == 12 * 8 - 15  # from the round the buffer holds a batch
    assert agent.learning_steps == report.learning_steps
    agent.save(tmp_path, {"report": {"avg_reward_last_100": report.avg_reward_last_100}})
    loaded, document = DDQNAgent.load(tmp_path)
    state = np.array([0.5, 0.6, 0.1, 0.4])
    assert loaded.q_values(state).tolist() == pytest.approx(agent.q_values(state).tolist())
    assert document["actions"][0] == 0.1 and document["actions"][-1] == 1.0
    controller = DDQNController(2_000_000, 10.0, loaded)
    assert controller.decide([]).share in document["actions"]


def test_target_network_follows_every_ten_steps() -> None:
    agent = DDQNAgent(settings=DDQNSettings(batch_size=4, target_update_steps=10))
    buffer = ReplayBuffer(100, 4)
    rng = np.random.default_rng(0)
    for _ in range(20):
        buffer.add(rng.random(4), int(rng.integers(10)), 1.0, rng.random(4), False)
    first = next(iter(agent.target.parameters())).clone()
    for _ in range(9):
        agent.learn(buffer, rng)
    assert torch.equal(next(iter(agent.target.parameters())), first)
    agent.learn(buffer, rng)
    assert torch.equal(next(iter(agent.target.parameters())), next(iter(agent.online.parameters())))


def test_a_damaged_agent_is_refused(tmp_path: Path) -> None:
    DDQNAgent().save(tmp_path, {})
    meta = json.loads((tmp_path / "agent.json").read_text())
    (tmp_path / "agent.json").write_text(json.dumps({**meta, "state_features": ["x"]}))
    with pytest.raises(BandwidthError, match="unknown state features"):
        DDQNAgent.load(tmp_path)
    (tmp_path / "agent.json").write_text(json.dumps(meta))
    data = (tmp_path / "agent.safetensors").read_bytes()
    (tmp_path / "agent.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BandwidthError, match="safetensors"):
        DDQNAgent.load(tmp_path)
    with pytest.raises(BandwidthError, match="finite state of 4"):
        DDQNAgent().greedy_action(np.zeros(5))
