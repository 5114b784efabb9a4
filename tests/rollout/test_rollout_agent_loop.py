"""The agent loop keeps token ids end to end and survives junk, slow envs and token limits."""

import asyncio

from kpop.envs.contract import AgentEnv, Message, StepInfo, StepResult, Task
from kpop.envs.registry import make_env
from kpop.rollout.agent_loop import Episode, LoopLimits, run_episode, solver_policy
from kpop.rollout.chat import ChatFormat
from kpop.rollout.engine import GenerationResult


class RecordingPolicy:
    """Returns scripted turns and records the exact context ids it was given."""

    def __init__(self, chat: ChatFormat, turns: list[str]) -> None:
        self.chat, self.turns, self.contexts, self.outputs = chat, list(turns), [], []

    async def __call__(self, context_ids, max_tokens):
        self.contexts.append(list(context_ids))
        ids = self.chat.turn_ids(self.turns.pop(0) if self.turns else "hmm")[:max_tokens]
        self.outputs.append(ids)
        n = len(ids)
        return GenerationResult("r", ids, [-0.5] * n, [len(self.outputs)] * n, "stop")


def test_solver_episode_is_correct_and_context_grows_by_appending(tiny_tokenizer):
    chat = ChatFormat(tiny_tokenizer)
    env = make_env("calculator")
    seen = []
    solver = solver_policy(env, chat)

    async def spy(context_ids, max_tokens):
        seen.append(list(context_ids))
        return await solver(context_ids, max_tokens)

    traj = asyncio.run(run_episode(env, Episode("calculator", 11, "g"), chat, spy, LoopLimits()))
    assert traj.reward == 1.0 and traj.finish_reason == "terminated" and traj.num_turns == 2
    for ctx in seen:
        assert traj.token_ids[: len(ctx)] == ctx


def test_trajectory_ids_equal_what_the_policy_received_and_produced(tiny_tokenizer):
    chat = ChatFormat(tiny_tokenizer)
    env = make_env("calculator")
    task = env.reset_task(3, None)
    expr = task.messages[-1].content.removeprefix("What is ").removesuffix("?")
    call = f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{expr}"}}}}</tool_call>'
    policy = RecordingPolicy(chat, [call, "Answer: 0"])
    traj = asyncio.run(run_episode(make_env("calculator"), Episode("calculator", 3), chat, policy, LoopLimits()))
    first, second = policy.contexts
    assert traj.token_ids[: len(first)] == first
    gen1 = traj.token_ids[len(first): len(first) + len(policy.outputs[0])]
    assert gen1 == policy.outputs[0]
    assert second == first + policy.outputs[0] + traj.token_ids[len(first) + len(gen1): len(second)]
    assert traj.token_ids[len(second):] == policy.outputs[1]
    # generated tokens carry their turn's version and log-prob; observation tokens are masked
    assert [v for v, m in zip(traj.versions, traj.loss_mask) if m] == [1] * len(policy.outputs[0]) + [2] * len(policy.outputs[1])
    assert sum(traj.loss_mask) == len(policy.outputs[0]) + len(policy.outputs[1])


def test_junk_turns_become_error_observations_until_max_turns(tiny_tokenizer):
    chat = ChatFormat(tiny_tokenizer)
    junk = ["<tool_call>{not json</tool_call>", '<tool_call>{"name": "rm", "arguments": {}}</tool_call>',
            '<tool_call>{"name": "calculator", "arguments": {"expression": 5}}</tool_call>']
    policy = RecordingPolicy(chat, junk)
    traj = asyncio.run(run_episode(make_env("calculator"), Episode("calculator", 1), chat, policy,
                                   LoopLimits(max_turns=3, max_total_tokens=4096)))
    assert traj.num_turns == 3 and traj.reward == 0.0 and traj.finish_reason in {"max_turns", "truncated"}
    text = tiny_tokenizer.decode(traj.token_ids)
    assert "invalid JSON" in text and "unknown tool" in text and "must be a string" in text


class SlowEnv(AgentEnv):
    def make_task(self, seed, options):
        return Task(f"slow-{seed}", [Message("user", "wait")])

    async def astep(self, action):
        await asyncio.sleep(30)
        return StepResult([], 1.0, True, False, StepInfo())


def test_slow_environment_step_times_out_without_raising(tiny_tokenizer):
    chat = ChatFormat(tiny_tokenizer)
    traj = asyncio.run(run_episode(SlowEnv(), Episode("slow", 0), chat, RecordingPolicy(chat, ["hi"]),
                                   LoopLimits(step_timeout_s=0.2)))
    assert traj.finish_reason == "env_error" and traj.env_error == "timeout"
    assert traj.reward == 0.0 and traj.timing.env_s < 5


def test_episode_stops_at_the_token_budget(tiny_tokenizer):
    chat = ChatFormat(tiny_tokenizer)
    env = make_env("calculator")
    prompt = len(chat.prompt_ids(env.reset_task(0, None).messages, env.task.tools))
    policy = RecordingPolicy(chat, ["<tool_call>{bad}</tool_call>"] * 10)
    traj = asyncio.run(run_episode(make_env("calculator"), Episode("calculator", 0), chat, policy,
                                   LoopLimits(max_turns=10, max_total_tokens=prompt + 40, max_new_tokens=40)))
    assert traj.finish_reason == "length" and len(traj.token_ids) <= prompt + 40


class SandboxEnv(AgentEnv):
    """Runs `seed` programs in the default sandbox per step; ends after two steps."""

    def make_task(self, seed, options):
        self.runs, self.steps = seed, 0
        return Task(f"sandbox-{seed}", [Message("user", "run")])

    async def astep(self, action):
        from kpop.envs.sandbox.api import run_python

        results = await asyncio.gather(*(run_python(f"print({i})") for i in range(self.runs)))
        assert [r.stdout.strip() for r in results] == [str(i) for i in range(self.runs)]
        self.steps += 1
        return StepResult([Message("user", "again")], 0.0, self.steps == 2, False, StepInfo())


def test_each_episode_counts_its_own_sandbox_executions(tiny_tokenizer):
    chat = ChatFormat(tiny_tokenizer)

    async def both():
        # two episodes at once on one event loop: each counts only the executions of its own steps
        return await asyncio.gather(*(
            run_episode(SandboxEnv(), Episode("sandbox", runs), chat, RecordingPolicy(chat, ["a", "b"]), LoopLimits())
            for runs in (1, 3)))

    one, three = asyncio.run(both())
    assert (one.sandbox_runs, three.sandbox_runs) == (2, 6) and one.num_turns == three.num_turns == 2
