from kpop.loop.start_check import start_warning
from kpop.spec import load_spec


def test_warns_below_the_floor_and_names_the_fix():
    text = start_warning(0.09, 0.055, 0.1, 200)
    assert text is not None
    assert start_warning(0.0, 0.11, 0.1, 200) is None        # greedy 0, but samples succeed: RL can learn
    assert "0.090" in text and "0.055" in text and "train.min_start_reward 0.1" in text
    assert "sft.steps, now 200" in text


def test_silent_at_or_above_the_floor_and_with_floor_zero():
    assert start_warning(0.0, 0.1, 0.1, 200) is None
    assert start_warning(0.5, 0.2, 0.1, 200) is None
    assert start_warning(0.5, 0.09, 0.1, 200) is not None     # the sampled reward decides
    assert start_warning(0.0, 0.0, 0.0, 200) is None


def test_a_start_set_by_an_anneal_after_the_target_is_not_warned_about():
    assert start_warning(0.0, 0.01, 0.1, 200, annealed_after_target=True) is None
    assert start_warning(0.0, 0.01, 0.1, 200, annealed_after_target=False) is not None


def test_without_a_cold_start_the_fix_is_a_cold_start():
    text = start_warning(0.0, 0.0, 0.1, 0)
    assert text is not None and "sft.steps > 0" in text


def test_the_spec_floor_decides():
    spec = load_spec(None, ["train.min_start_reward=0.3"])
    assert start_warning(0.0, 0.2, spec.train.min_start_reward, spec.sft.steps) is not None
    spec = load_spec(None, ["train.min_start_reward=0.1"])
    assert start_warning(0.0, 0.2, spec.train.min_start_reward, spec.sft.steps) is None


def test_cold_start_target_is_the_mean_of_the_last_ten_losses():
    from kpop.loop.start_check import reached_target

    assert not reached_target([0.05] * 9, 0.06)                      # fewer than ten steps
    assert reached_target([0.05] * 10, 0.06)
    assert not reached_target([0.05] * 9 + [0.2], 0.06)              # mean 0.065
    assert reached_target([1.0] * 20 + [0.05] * 10, 0.06)            # only the last ten count
    assert not reached_target([0.0] * 10, 0.0)                       # 0 = run every step
