"""The seed's Double DQN: the Q-network, its replay buffer and Double-DQN targets, training
on replayed link traces, and the saved form (agent.safetensors + agent.json)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fogfl.bandwidth.controllers import FORECAST_FEATURE, STATE_FEATURES, Upload, state_features
from fogfl.bandwidth.environment import EnvironmentSettings, LinkTrace, UploadEnvironment
from fogfl.bandwidth.files import load_weights, read_model, write_model
from fogfl.bandwidth.ladder import ACTIONS, codec_for_share, share_of_action
from fogfl.errors import BandwidthError

FloatArray = npt.NDArray[np.float64]
FORMAT = "fogfl-bandwidth-agent/1"
STEM = "agent"
# Forecast of the next upload's throughput from the measured throughputs so far.
Forecaster = Callable[[Sequence[float]], float | None]
# Called after each episode with (episode, its mean reward per round, ε).
EpisodeCallback = Callable[[int, float, float], None]


class QNetwork(nn.Module):
    """state → 128 → 64 → 32 → one Q-value per action (ReLU and batch norm after each
    hidden layer, dropout 0.3 after the first two)."""

    def __init__(self, state_size: int, actions: int = ACTIONS, dropout: float = 0.3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(state_size, 128), nn.ReLU(), nn.BatchNorm1d(128), nn.Dropout(dropout),
            nn.Linear(128, 64), nn.ReLU(), nn.BatchNorm1d(64), nn.Dropout(dropout),
            nn.Linear(64, 32), nn.ReLU(), nn.BatchNorm1d(32),
            nn.Linear(32, actions),
        )  # fmt: skip

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.net(states)


@dataclass(frozen=True)
class DDQNSettings:
    episodes: int = 2000
    gamma: float = 0.99
    epsilon_start: float = 1.0
    epsilon_end: float = 0.01
    epsilon_decay: float = 0.995  # ε ← max(ε_end, ε · decay) after each episode
    buffer_size: int = 10_000
    batch_size: int = 64
    target_update_steps: int = 10  # learning steps between copies online → target
    learning_rate: float = 0.001
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.episodes, self.buffer_size, self.batch_size, self.target_update_steps) < 1:
            raise BandwidthError("episodes, buffer, batch and target update must be ≥ 1")
        if not (0 <= self.gamma <= 1 and 0 <= self.epsilon_end <= self.epsilon_start <= 1):
            raise BandwidthError("γ must be in [0, 1] and 0 ≤ ε_end ≤ ε_start ≤ 1")
        if not (0 < self.epsilon_decay <= 1 and self.learning_rate > 0):
            raise BandwidthError("the ε decay must be in (0, 1] and the learning rate > 0")


def double_dqn_targets(
    rewards: torch.Tensor,
    dones: torch.Tensor,
    next_q_online: torch.Tensor,
    next_q_target: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """y = r + γ·(1 − done)·Q_target(s′, argmax_a Q_online(s′, a)): the online network
    picks the next action, the target network values it."""
    chosen = next_q_online.argmax(dim=1, keepdim=True)
    next_value = next_q_target.gather(1, chosen).squeeze(1)
    return rewards + gamma * (1.0 - dones) * next_value


class ReplayBuffer:
    """The last `capacity` transitions (s, a, r, s′, done), sampled uniformly."""

    def __init__(self, capacity: int, state_size: int) -> None:
        self.states = np.zeros((capacity, state_size), dtype=np.float32)
        self.next_states = np.zeros((capacity, state_size), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.dones = np.zeros(capacity, dtype=np.float32)
        self.capacity, self.size, self.next = capacity, 0, 0

    def add(self, state: FloatArray, action: int, reward: float, next_state: FloatArray,
            done: bool) -> None:  # fmt: skip
        i = self.next
        self.states[i], self.actions[i], self.rewards[i] = state, action, reward
        self.next_states[i], self.dones[i] = next_state, float(done)
        self.next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, count: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        rows = rng.integers(0, self.size, count)
        return (
            torch.from_numpy(self.states[rows]),
            torch.from_numpy(self.actions[rows]),
            torch.from_numpy(self.rewards[rows]),
            torch.from_numpy(self.next_states[rows]),
            torch.from_numpy(self.dones[rows]),
        )


class DDQNAgent:
    """An online and a target Q-network over the state features."""

    def __init__(self, with_forecast: bool = False, settings: DDQNSettings = DDQNSettings()):
        self.with_forecast = with_forecast
        self.settings = settings
        self.state_size = len(STATE_FEATURES) + int(with_forecast)
        torch.manual_seed(settings.seed)
        self.online = QNetwork(self.state_size)
        self.target = copy.deepcopy(self.online)
        self.online.eval()
        self.target.eval()
        self.optimiser = torch.optim.Adam(self.online.parameters(), lr=settings.learning_rate)
        self.learning_steps = 0

    def q_values(self, state: FloatArray) -> FloatArray:
        with torch.no_grad():
            values = self.online(torch.as_tensor(state, dtype=torch.float32).reshape(1, -1))
        return values[0].numpy().astype(np.float64)

    def greedy_action(self, state: FloatArray) -> int:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.state_size,) or not np.all(np.isfinite(state)):
            raise BandwidthError(
                f"the agent takes a finite state of {self.state_size} features, got {state}"
            )
        return int(np.argmax(self.q_values(state)))

    def act(self, state: FloatArray, epsilon: float, rng: np.random.Generator) -> int:
        if rng.random() < epsilon:
            return int(rng.integers(ACTIONS))
        return self.greedy_action(state)

    def learn(self, buffer: ReplayBuffer, rng: np.random.Generator) -> float:
        """One gradient step on a sampled batch (Huber loss); every `target_update_steps`
        steps the target network becomes a copy of the online one."""
        states, actions, rewards, next_states, dones = buffer.sample(self.settings.batch_size, rng)
        with torch.no_grad():
            self.online.eval()
            next_online = self.online(next_states)
            targets = double_dqn_targets(
                rewards, dones, next_online, self.target(next_states), self.settings.gamma
            )
        self.online.train()
        chosen = self.online(states).gather(1, actions.unsqueeze(1)).squeeze(1)
        loss = nn.functional.smooth_l1_loss(chosen, targets)
        self.optimiser.zero_grad()
        loss.backward()
        self.optimiser.step()
        self.online.eval()
        self.learning_steps += 1
        if self.learning_steps % self.settings.target_update_steps == 0:
            self.target.load_state_dict(self.online.state_dict())
        return float(loss.detach())

    def save(self, directory: Path, document: dict[str, Any]) -> list[Path]:
        tensors = {f"online.{k}": v for k, v in self.online.state_dict().items()}
        tensors |= {f"target.{k}": v for k, v in self.target.state_dict().items()}
        full = {
            "format": FORMAT,
            "state_features": list(STATE_FEATURES) + [FORECAST_FEATURE] * self.with_forecast,
            "actions": [share_of_action(a) for a in range(ACTIONS)],
            "settings": asdict(self.settings),
            **document,
        }
        return write_model(directory, STEM, tensors, full)

    @classmethod
    def load(cls, directory: Path) -> tuple[DDQNAgent, dict[str, Any]]:
        tensors, document = read_model(directory, STEM, FORMAT, "DDQN agent")
        where = str(directory / f"{STEM}.json")
        features = document.get("state_features")
        if features not in (list(STATE_FEATURES), [*STATE_FEATURES, FORECAST_FEATURE]):
            raise BandwidthError(f"{where}: unknown state features {features!r}")
        try:
            settings = DDQNSettings(**document["settings"])
        except (KeyError, TypeError) as error:
            raise BandwidthError(f"{where}: bad settings ({error})") from None
        agent = cls(with_forecast=len(features) > len(STATE_FEATURES), settings=settings)
        weights = str(directory / f"{STEM}.safetensors")
        for prefix, network in (("online.", agent.online), ("target.", agent.target)):
            part = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            load_weights(network, part, weights)
        extra = [k for k in tensors if not k.startswith(("online.", "target."))]
        if extra:
            raise BandwidthError(f"{weights}: unexpected tensors {extra[:3]}")
        agent.online.eval()
        agent.target.eval()
        return agent, document


@dataclass
class AgentReport:
    """The seed's fields (average reward per round over the last 100 episodes, final ε)
    and the whole reward curve."""

    episodes: int = 0
    avg_reward_last_100: float = 0.0
    final_epsilon: float = 1.0
    seconds: float = 0.0
    learning_steps: int = 0
    episode_rewards: list[float] = field(default_factory=list)


def forecast_for(history: Sequence[Upload], forecaster: Forecaster | None) -> float | None:
    if forecaster is None:
        return None
    return forecaster([u.mbit_s for u in history])


def train_agent(
    traces: Sequence[LinkTrace],
    environment: EnvironmentSettings,
    settings: DDQNSettings,
    forecaster: Forecaster | None = None,
    on_episode: EpisodeCallback | None = None,
) -> tuple[DDQNAgent, AgentReport]:
    """Each episode replays a random training trace from a random moment for
    `environment.rounds` rounds; ε-greedy actions, one learning step per round once the
    buffer holds a batch."""
    if not traces:
        raise BandwidthError("the agent needs at least one training trace")
    started = time.monotonic()
    rng = np.random.default_rng(settings.seed)
    agent = DDQNAgent(with_forecast=forecaster is not None, settings=settings)
    buffer = ReplayBuffer(settings.buffer_size, agent.state_size)
    report = AgentReport()
    epsilon = settings.epsilon_start

    def state_of(env: UploadEnvironment) -> FloatArray:
        return state_features(
            env.history,
            environment.model_bytes,
            environment.deadline_s,
            forecast_for(env.history, forecaster),
            agent.with_forecast,
        )

    for episode in range(1, settings.episodes + 1):
        trace = traces[int(rng.integers(len(traces)))]
        env = UploadEnvironment(trace, environment, float(rng.uniform(0, trace.duration_s)))
        state = state_of(env)
        rewards = []
        while not env.done:
            action = agent.act(state, epsilon, rng)
            outcome = env.step(codec_for_share(share_of_action(action)))
            next_state = state_of(env)
            buffer.add(state, action, outcome.reward, next_state, env.done)
            rewards.append(outcome.reward)
            state = next_state
            if buffer.size >= settings.batch_size:
                agent.learn(buffer, rng)
        report.episode_rewards.append(float(np.mean(rewards)))
        epsilon = max(settings.epsilon_end, epsilon * settings.epsilon_decay)
        if on_episode is not None:
            on_episode(episode, report.episode_rewards[-1], epsilon)
    report.episodes = settings.episodes
    report.avg_reward_last_100 = float(np.mean(report.episode_rewards[-100:]))
    report.final_epsilon = epsilon
    report.seconds = time.monotonic() - started
    report.learning_steps = agent.learning_steps
    return agent, report
