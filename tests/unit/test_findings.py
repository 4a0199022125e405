"""The README's findings are computed from the results JSON: each verdict must follow the numbers."""
from der_pipeline.evaluate.findings import dataset_findings, render_findings, status_line

EXPERTS = ["small", "big"]


def method(acc, cost, calls=1.0, std=0.0, refine=0.0, stop_right=1.0, refine_wrong=0.0):
    return {"accuracy": acc, "accuracy_std": std, "cost_gflops": cost, "calls": calls, "refine_rate": refine,
            "stop_if_right": stop_right, "refine_if_wrong": refine_wrong}


def results(der_acc, der_cost, rr_p, best_p):
    der = "der"
    rr = "round_robin"
    return {"dataset": "toy", "metric": "accuracy", "train_queries": 70, "test_queries": 30, "data_seed": 13,
            "seeds": [1, 2], "experts": EXPERTS, "best_single": "single:big",
            "round_robin_order": ["small", "big"], "der_settings": {"form": "per_step", "alpha": 0.1},
            "methods": {"single:small": method(0.5, 10.0), "single:big": method(0.8, 100.0),
                        rr: method(0.7, 110.0, calls=2.0, refine=1.0), der: method(der_acc, der_cost, 1.5, 0.01, 0.5,
                                                                                   0.4, 0.6),
                        "oracle": method(0.9, 40.0)},
            "comparisons": [{"b": rr, "diff": der_acc - 0.7, "ci_low": -0.1, "ci_high": 0.2, "p_value": rr_p},
                            {"b": "single:big", "diff": der_acc - 0.8, "ci_low": -0.2, "ci_high": -0.01,
                             "p_value": best_p}],
            "goal_bound": {"strong": "big", "strong_score": 0.8, "budget_share": 0.7, "best": None}}


def test_status_line_counts_queries_and_tree_nodes():
    line = status_line(results(0.75, 50.0, 0.5, 0.01))
    assert "100 queries with complete 6-node trees (70 train, 30 test, data seed 13)" in line


def test_aim_met_only_when_accuracy_at_least_round_robin_at_lower_cost():
    met = " ".join(dataset_findings(results(0.75, 50.0, rr_p=0.01, best_p=0.01)))
    assert "significantly above round-robin" in met and "is met on the point estimates." in met
    weak = " ".join(dataset_findings(results(0.75, 50.0, rr_p=0.3, best_p=0.01)))
    assert "not significantly different from round-robin" in weak and "met on the point estimates, but not" in weak
    pricier = " ".join(dataset_findings(results(0.75, 120.0, rr_p=0.01, best_p=0.01)))
    assert "is not met." in pricier
    worse = " ".join(dataset_findings(results(0.65, 50.0, rr_p=0.01, best_p=0.01)))
    assert "significantly below round-robin" in worse and "is not met." in worse


def test_findings_carry_the_numbers_they_claim():
    text = " ".join(dataset_findings(results(0.75, 50.0, rr_p=0.3, best_p=0.0004)))
    assert "strongest single expert is big (0.800 at 100 GFLOPs" in text
    assert "significantly below big alone (-0.050" in text and "p < 0.001" in text and "0.50x its cost" in text
    assert "refines 50% of the test queries and escalates 0% to a fresh answer; it stops on 40% of its right" in text
    assert "The oracle reaches 0.900: +0.150 over DER" in text
    # the routing goal: the strongest expert's score at <= 70% of its cost, with how far it is missed
    assert "not met: DER 0.750 against 0.800 for big" in text and "at 50% of its cost (0.050 of score short)" in text


def test_the_routing_goal_is_met_only_at_the_strongest_score_and_at_most_70_percent_of_its_cost():
    met = " ".join(dataset_findings(results(0.8, 70.0, rr_p=0.3, best_p=0.9)))
    assert "cost): met: DER 0.800" in met
    pricey = " ".join(dataset_findings(results(0.85, 75.0, rr_p=0.3, best_p=0.1)))
    assert "not met" in pricey and "5% of the cost over" in pricey


def test_the_best_fixed_path_and_learning_findings():
    out = results(0.75, 50.0, rr_p=0.3, best_p=0.01)
    out["methods"]["best_fixed"] = {**method(0.76, 40.0), "chosen": "small>big"}
    out["training"] = [{"seed": 1, "iterations": 40, "selected_iteration": 12, "best_val_return": 0.9,
                        "untrained_val_return": 0.5}]
    text = " ".join(dataset_findings(out))
    assert "Best fixed path (small>big" in text and "DER misses it (score -0.010, cost 1.25x)" in text
    assert "kept PPO iterations (12 of 40) reach a mean cross-validated return of 0.900, against 0.500" in text
    assert "Fallback" not in text  # every seed kept its learned policy
    check = {"gain": 0.001, "se": 0.01, "beats_fixed_path": False, "path_name": "big"}
    out["training"] += [{**out["training"][0], "seed": 2, "policy": "best_fixed_path", "fixed_path_check": check}]
    text = " ".join(dataset_findings(out))
    assert ("Fallback: in 1 of 2 seeds the learned policy's out-of-fold utility did not beat the best fixed path's "
            "by more than its standard error, so DER uses that path there (big)") in text


def test_a_higher_score_at_a_higher_cost_than_the_best_fixed_path_shows_the_rewards_trade_off():
    out = results(0.85, 60.0, rr_p=0.3, best_p=0.01)
    out["methods"]["der"]["cost_norm"] = 0.6
    out["methods"]["best_fixed"] = {**method(0.80, 30.0), "cost_norm": 0.3, "chosen": "small"}
    text = " ".join(dataset_findings(out))
    # 0.85 - 0.1 x 0.6 = 0.790 against 0.80 - 0.1 x 0.3 = 0.770
    assert "DER misses it (score +0.050, cost 2.00x)" in text
    assert "score - 0.1 x normalised cost is 0.790 for DER against 0.770 for the fixed path" in text
    lower = results(0.75, 50.0, rr_p=0.3, best_p=0.01)
    lower["methods"]["best_fixed"] = {**method(0.76, 40.0), "cost_norm": 0.4, "chosen": "small>big"}
    assert "normalised cost" not in " ".join(dataset_findings(lower))  # a lower score: no trade-off to show


def test_render_findings_lists_every_dataset():
    out = results(0.75, 50.0, 0.3, 0.01)
    lines = render_findings([out, {**out, "dataset": "other"}], {})
    assert any(line.startswith("- **toy**") for line in lines) and any(line.startswith("- **other**") for line in lines)


def test_bertscore_evidence_without_right_answers_reads_n_a():
    """A tree with no right answer (a hard task on a tiny sample) has no share of right answers to report."""
    out = results(0.75, 50.0, 0.3, 0.01)
    ablations = {"tables": {}, "bertscore_evidence": {"nodes": 40, "wrong_at_or_above_0.5": 0.25,
                                                      "right_at_or_above_0.5": None}}
    text = " ".join(dataset_findings(out, ablations))
    assert "BERTScore as P (all 40 train nodes): 25% of wrong and n/a of right answers reach 0.5" in text


def test_parse_rate_line_names_the_paths_below_the_floor():
    import polars as pl

    from der_pipeline.evaluate.report import parse_rate_line

    ok = pl.DataFrame({"path": ["a", "a>b"], "parse_rate": [1.0, 0.96]})
    assert "at least 95% of the answers on every path (lowest: a>b, 96.0%)" in parse_rate_line("toy", ok)
    low = pl.DataFrame({"path": ["a", "a>b", "b"], "parse_rate": [0.5, 0.9, 1.0]})
    line = parse_rate_line("toy", low)
    assert "2 of 3 paths fall below 95%: a 50.0%, a>b 90.0%" in line and " b 100" not in line


def test_the_training_table_says_which_policy_der_uses(repo_params):
    from der_pipeline.evaluate.report import training_block

    check = {"gain": 0.0021, "se": 0.0105, "beats_fixed_path": False, "path_name": "big"}
    row = {"seed": 1, "iterations": 32, "selected_iteration": 30, "best_val_return": 0.65, "untrained_val_return": 0.5}
    out = {"dataset": "no-such-dataset", "training": [
        {**row, "policy": "learned", "fixed_path_check": {**check, "gain": 0.02, "beats_fixed_path": True}},
        {**row, "seed": 2, "policy": "best_fixed_path", "fixed_path_check": check}]}
    text = "\n".join(training_block(repo_params, out, str))
    assert "| 1 | 30 of 32 | 0.650 | 0.500 | +0.0200 ± 0.0105 | the learned policy |" in text
    assert "| 2 | 30 of 32 | 0.650 | 0.500 | +0.0021 ± 0.0105 | the fixed path (big) |" in text
