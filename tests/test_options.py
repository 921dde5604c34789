"""The one option declaration (segood/options.py): every kind of bad value gives one message with
key, value, file and expectation; defaults fill what is not given."""
import pytest

from segood.options import Opt, OptionError, check_options, check_value


@pytest.mark.parametrize("opt,value,expect", [
    (Opt(100, int, min=1), -5, "train.steps: -5 in x.yaml: expected an integer >= 1"),
    (Opt(100, int, min=1), "five", "train.steps: 'five' in x.yaml: expected an integer >= 1"),
    (Opt(100, int, min=1), True, "train.steps: True in x.yaml: expected an integer >= 1"),
    (Opt(0.1, float, min=0.0, max=1.0), 1.5, "train.steps: 1.5 in x.yaml: expected a number in [0.0, 1.0]"),
    (Opt("ce", str, choices=("ce", "focal")), "foo", "train.steps: 'foo' in x.yaml: expected one of 'ce', 'focal'"),
    (Opt(1.0, float), None, "train.steps: None in x.yaml: expected a number"),
    (Opt(1.0, float), float("nan"), "train.steps: nan in x.yaml: expected a number"),
])
def test_bad_values_name_key_value_file_and_expectation(opt, value, expect):
    with pytest.raises(OptionError) as e:
        check_value("train.steps", value, opt, "x.yaml")
    assert str(e.value) == expect


def test_good_values_pass_and_ints_become_floats():
    assert check_value("a", 3, Opt(1.0, float)) == 3.0 and isinstance(check_value("a", 3, Opt(1.0, float)), float)
    assert check_value("a", None, Opt(None, int, nullable=True)) is None
    assert check_value("a", "focal", Opt("ce", str, choices=("ce", "focal"))) == "focal"


def test_check_options_fills_defaults_and_refuses_unknown_keys():
    declared = {"n_min": Opt(8, int, min=1), "n_max": Opt(32, int, min=1)}
    assert check_options("synthesis.block", {"n_max": 16}, declared) == {"n_min": 8, "n_max": 16}
    with pytest.raises(OptionError, match=r"synthesis.block.n_mx in c.yaml: unknown option \(known: n_max, n_min\)"):
        check_options("synthesis.block", {"n_mx": 3}, declared, "c.yaml")
