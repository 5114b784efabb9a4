"""Training rounds: the schedule, the spec's checks, distillation targets (shortest correct, cut after
the answer) and the figures rounds are judged by, against hand-computed cases."""

import math
import re

import pytest

from kpop.spec import SpecError, load_spec
from kpop.stages.candidates import answer_prefix, distill_targets, prune
from kpop.stages.checks import round_envs, round_problems
from kpop.stages.measures import correct_tokens, mean_rubric
from kpop.stages.schedule import Round, all_rounds, describe, rounds_after, segment_end
from kpop.trajectory import Trajectory

MIXED = "envs=[{name: calculator}, {name: instructions, weight: 3}]"


# ---- schedule --------------------------------------------------------------------------------

def test_rounds_follow_every_kth_rl_step_distillation_first_with_their_own_numbering():
    spec = load_spec(None, ["train.steps=6", "learner.distill.every=2", "learner.distill.steps=3",
                            "learner.distill.tasks=5", "learner.preference.every=3", MIXED])
    assert [(r.after_step, r.kind) for r in all_rounds(spec)] == [
        (2, "distill"), (3, "preference"), (4, "distill"), (6, "distill"), (6, "preference")]
    assert rounds_after(spec, 1) == [] and rounds_after(spec, 7) == []
    third = rounds_after(spec, 6)[0]
    assert third == Round("distill", 6, 3, 3, 5)
    # round 3 trains distill steps 7, 8, 9 on draws 30.. of the distill stream
    assert third.first_step == 7 and third.first_draw == 30
    assert rounds_after(spec, 6)[1].first_step == 2 and rounds_after(spec, 6)[1].first_draw == 16


def test_a_stretch_of_rl_ends_at_the_next_step_with_a_round_or_at_the_last_step():
    spec = load_spec(None, ["train.steps=7", "learner.distill.every=2", "learner.preference.every=3", MIXED])
    # rounds follow steps 2, 3, 4, 6: the KPop loop draws for 2 steps, then 1, 1, 2 and the last 1
    assert [segment_end(spec, s) for s in range(8)] == [2, 2, 3, 4, 6, 6, 7, 7]
    assert [segment_end(load_spec(None, ["train.steps=5"]), s) for s in (0, 3, 5)] == [5, 5, 5]


def test_the_plan_shows_when_rounds_run_and_where_their_prompts_come_from():
    from kpop.launch import plan

    spec = load_spec(None, ["train.steps=100", "learner.distill.every=10", "learner.preference.every=50", MIXED])
    lines = describe(spec)
    assert lines[0].startswith("distillation round after RL step 10, 20, ..., 100 (10 rounds): 1 step(s) x 16 prompts "
                               "from calculator, instructions;")
    assert lines[1].startswith("preference round after RL step 50, 100 (2 rounds): 1 step(s) x 16 prompts from instructions;")
    assert "rounds:    distillation round" in plan(spec)
    assert describe(load_spec(None, [])) == [] and "rounds:" not in plan(load_spec(None, []))


# ---- spec checks -----------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "message"), [
    (["learner.distill.lr=0.01"], "learner.distill.lr is set, but no distillation round runs (learner.distill.every is 0)"),
    (["learner.preference.beta=0.5", "learner.preference.tasks=4"],
     "learner.preference.beta is set, but no preference round runs"),
    (["learner.preference.every=50"], "learner.preference.every (50) is more than train.steps (40)"),
    (["learner.preference.every=5", "learner.zero_stage=3"], "use learner.zero_stage 0-2 with preference rounds"),
])
def test_the_spec_refuses_rounds_it_cannot_run_and_settings_no_round_uses(overrides, message):
    with pytest.raises(SpecError) as info:
        load_spec(None, overrides)
    assert message in str(info.value)


def test_a_preference_round_needs_an_environment_that_reports_its_rubric_parts():
    alone = load_spec(None, ["learner.preference.every=5"])
    [problem] = round_problems(alone)
    assert problem.path == "learner.preference.rubric_weights"
    assert "calculator: task, correct, format, used_tool" in problem.message and "instructions" in problem.message
    mixed = load_spec(None, ["learner.preference.every=5", MIXED])
    assert round_problems(mixed) == [] and [e.name for e in round_envs(mixed, "preference")] == ["instructions"]
    assert [e.name for e in round_envs(mixed, "distill")] == ["calculator", "instructions"]
    # weights on the calculator's own parts make it eligible
    own = load_spec(None, ["learner.preference.every=5", "learner.preference.rubric_weights={correct: 1.0}"])
    assert round_problems(own) == []


def test_kpop_run_reports_the_rubric_problem_at_dry_run(tmp_path):
    from kpop.cli.main import main

    assert main(["run", "--dry-run", "--set", "learner.preference.every=5"]) == 2


# ---- distillation targets --------------------------------------------------------------------

EOS = 2
PIECES = {3: "<tool_call>x</tool_call>", 4: "7", 10: "Answer:", 11: " 4", 12: "2", 13: "\n", 14: "Wait", 15: " check",
          16: " again", 17: " 42", 18: "2\nWa", 19: "The", 20: " sum", EOS: ""}
PATTERN = r"Answer:\s*(-?\d+)"


def decode(ids):
    return "".join(PIECES[i] for i in ids)


def sample(turns, correct=1.0, group="g", env="calculator"):
    """A trajectory: prompt token 1, then each turn's ids (generated) followed by an observation
    token 1 except after the last."""
    ids, mask = [1], [0]
    for i, turn in enumerate(turns):
        ids += turn
        mask += [1] * len(turn)
        if i < len(turns) - 1:
            ids.append(1)
            mask.append(0)
    logps = [0.0 if m == 0 else -0.5 for m in mask]
    versions = [-1 if m == 0 else 3 for m in mask]
    return Trajectory("t", env, ids, mask, logps, versions, reward=correct, reward_parts={"task": correct}, group_id=group,
                      num_turns=len(turns))


def test_answer_prefix_ends_at_the_token_completing_the_first_answer():
    assert answer_prefix([10, 11, 12, 13, 14, 15, EOS], decode, PATTERN) == 3          # "Answer: 4" is not the answer yet
    assert answer_prefix([10, 11, 18, 15, EOS], decode, PATTERN) == 3                   # the completing token keeps "\nWa"
    assert answer_prefix([10, 11, 12, 13, EOS], decode, PATTERN) is None                # only whitespace follows
    assert answer_prefix([19, 20, 14, EOS], decode, PATTERN) is None                    # no answer
    assert answer_prefix([10, 17, 14, 10, 11, EOS], decode, PATTERN) == 2               # the first of two answers


def test_prune_cuts_only_the_final_turn_ends_with_eos_and_keeps_the_score():
    tool, final = [3, EOS], [10, 11, 12, 13, 14, 15, 16, 10, 17, EOS]
    t = sample([tool, final])
    cut = prune(t, decode, PATTERN, EOS)
    assert cut.token_ids == [1, 3, EOS, 1, 10, 11, 12, EOS]
    assert cut.loss_mask == [0, 1, 1, 0, 1, 1, 1, 1]
    assert cut.logprobs == [0.0, -0.5, -0.5, 0.0, -0.5, -0.5, -0.5, 0.0] and cut.versions[-1] == 3
    assert cut.reward == t.reward and cut.reward_parts == t.reward_parts and cut.num_generated == 6
    assert re.search(PATTERN, decode(cut.token_ids[4:])).group(1) == "42"
    # cut right before an EOS already there: nothing to add
    assert prune(sample([[10, 17, EOS, 14, EOS]]), decode, PATTERN, EOS).token_ids == [1, 10, 17, EOS]
    clean = sample([[10, 17, EOS]])
    assert prune(clean, decode, PATTERN, EOS) is clean


def test_shortest_correct_per_prompt_after_pruning():
    # prompt a: a re-checking answer (9 tokens, 3 after the cut) beats a plain 5-token one; a
    # wrong 2-token sample never counts
    recheck = sample([[10, 17, 13, 14, 15, 16, 10, 17, EOS]], group="a")
    plain = sample([[19, 20, 11, 12, EOS]], group="a")
    wrong = sample([[10, EOS]], correct=0.0, group="a")
    # prompt b: two correct samples without answers to cut, the shorter wins; prompt c: none correct
    b_long, b_short = sample([[19, 20, 19, 20, EOS]], group="b"), sample([[19, 20, EOS]], group="b")
    c_wrong = sample([[10, 11, EOS]], correct=0.0, group="c")
    batch = [recheck, plain, wrong, b_long, b_short, c_wrong]
    found = distill_targets(batch, 1.0, {"calculator": PATTERN}, decode, EOS)
    assert [t.group_id for t in found.targets] == ["a", "b"]
    assert found.targets[0].token_ids == [1, 10, 17, EOS] and found.targets[1] is b_short
    assert found.correct == [recheck, plain, b_long, b_short]
    assert (found.pruned, found.pruned_tokens) == (1, 9 - 3)
    # without the cut (or for a family with no answer marker) the plain sample is the shortest
    for kwargs in ({"cut": False}, {}):
        patterns = {"calculator": PATTERN} if kwargs else {"instructions": PATTERN}
        plain_wins = distill_targets(batch, 1.0, patterns, decode, EOS, **kwargs)
        assert plain_wins.targets[0] is plain and plain_wins.pruned == 0


def test_a_lucky_shortcut_is_taught_only_when_most_correct_samples_take_it():
    # prompt a: three correct samples call the tool then answer (2 turns), one answers at once (1 turn,
    # the shortest); prompt b: two of three correct samples answer at once; prompt c: a 1-1 tie
    work = [sample([[3, EOS], [19, 20, 19, EOS]], group="a") for _ in range(3)]
    guess = sample([[19, EOS]], group="a")
    b_work, b_quick = sample([[3, EOS], [19, EOS]], group="b"), [sample([[19, 20, EOS]], group="b") for _ in range(2)]
    c_work, c_quick = sample([[3, EOS], [19, EOS]], group="c"), sample([[19, 20, EOS]], group="c")
    batch = work + [guess, b_work, *b_quick, c_work, c_quick]
    usual = distill_targets(batch, 1.0, {}, decode, EOS)
    assert usual.targets == [work[0], b_quick[0], c_work]
    anything = distill_targets(batch, 1.0, {}, decode, EOS, same_turns=False)
    assert anything.targets == [guess, b_quick[0], c_quick]
    assert usual.correct == anything.correct == batch


def test_distill_usual_turns_is_a_spec_field_the_dry_run_names():
    spec = load_spec(None, ["learner.distill.every=2", "train.steps=2"])
    assert spec.learner.distill.usual_turns is True
    assert "usual number of turns" in "\n".join(describe(spec))
    off = load_spec(None, ["learner.distill.every=2", "train.steps=2", "learner.distill.usual_turns=false"])
    assert "usual number of turns" not in "\n".join(describe(off))


def test_prune_with_a_real_tokenizer(tiny_tokenizer):
    from kpop.envs.families.calculator import CalculatorEnv

    tok = tiny_tokenizer
    ids = tok.encode("Answer: 1234\nLet me check that again: 12+34 ... Answer: 1234", add_special_tokens=False)
    t = Trajectory("t", "calculator", [5] + ids + [tok.eos_token_id], [0] + [1] * (len(ids) + 1),
                   [0.0] + [-0.1] * (len(ids) + 1), [-1] + [0] * (len(ids) + 1), reward=1.0, reward_parts={"task": 1.0})
    cut = prune(t, lambda x: tok.decode(x, skip_special_tokens=True), CalculatorEnv.answer_pattern, tok.eos_token_id)
    text = tok.decode(cut.token_ids[1:], skip_special_tokens=True)
    assert cut.num_generated < t.num_generated and cut.token_ids[-1] == tok.eos_token_id
    assert re.match(r"Answer: 1234\s*\Z", text) or re.match(r"Answer: 1234\W", text), text
    assert "check" not in text


# ---- measures --------------------------------------------------------------------------------

def test_correct_tokens_and_mean_rubric_hand_computed():
    ok3, ok5, bad = sample([[19, 20, EOS]]), sample([[19, 20, 19, 20, EOS]]), sample([[19, EOS]], correct=0.0)
    assert correct_tokens([ok3, ok5, bad], 1.0) == 4.0 and correct_tokens([bad], 1.0) is None
    w = {"informative": 1.0, "errors": -1.0, "verbosity": -0.5}
    a = Trajectory("t", "instructions", [1, 5], [0, 1], [0.0, -1.0], [-1, 0],
                   reward_parts={"informative": 1.0, "errors": 0.0, "verbosity": 0.4})
    b = Trajectory("t", "instructions", [1, 5], [0, 1], [0.0, -1.0], [-1, 0],
                   reward_parts={"informative": 0.0, "errors": 1.0, "verbosity": 0.0, "task": 0.0})
    # a: 1 - 0.2 = 0.8; b: -1; the calculator sample reports no rubric part and is left out
    assert math.isclose(mean_rubric([a, b, ok3], w), (0.8 - 1.0) / 2) and mean_rubric([ok3], w) is None
