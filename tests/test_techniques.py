"""The technique registry (jaxviz.techniques): it covers every public technique, its defaults are
the functions' signatures, every numeric option has real bounds that refuse NaN, infinities and
out-of-range values, and the command line's flags are exactly the registry's options."""
from __future__ import annotations

import argparse
import inspect
import math

import pytest

import jaxviz
from jaxviz.errors import JaxvizError
from jaxviz.options import MISSING, Option
from jaxviz.techniques import TECHNIQUES, check, get, record, techniques

# Public functions (jaxviz's top-level exports and the functions the CLI runs) that are thin
# wrappers of a registered technique: the wrapper -> the technique that validates for it.
WRAPPERS = {
    "vanilla_saliency": "vanilla", "smoothgrad": "smoothgrad", "integrated_gradients": "integrated",
    "guided_backprop": "guided", "deconvnet": "deconv", "guided_grad_cam": "guided-gradcam",
    "incremental_occlusion": "occlusion", "fgsm": "fgsm", "ifgsm": "ifgsm", "pgd": "pgd-linf",
    "attack": "pgd-linf", "projected_gradient_descent": "pgd-linf",
}
NOT_TECHNIQUES = {"jaxviz.interface", "jaxviz.weights.store", "jaxviz.accel", "jaxviz.images", "jaxviz.targets"}
NUMERIC = (int, float, "amount")


def test_every_public_technique_is_registered():
    functions = {t.function.split(":")[1]: t for t in TECHNIQUES.values()}
    exported = [name for name, module in jaxviz._EXPORTS.items() if module not in NOT_TECHNIQUES]
    assert exported, "jaxviz exports no technique?"
    for name in exported:
        assert name in functions or name in WRAPPERS, f"jaxviz.{name} is not in the technique registry"
        if name in WRAPPERS:
            assert WRAPPERS[name] in TECHNIQUES
    # every CLI subcommand that runs a technique has its entries
    from jaxviz.cli import COMMANDS, build_parser
    build_parser()
    for command in ("saliency", "segment", "predict", "filters", "activations", "scan", "patches", "neighbors",
                    "embed", "classviz", "neuron", "invert", "dream", "adversarial", "texture", "style",
                    "fast-style", "bias"):
        assert command in COMMANDS and techniques(command), command
    # the lists the brief names, one entry each
    for name in ("vanilla", "smoothgrad", "integrated", "inputxgrad", "guided", "deconv", "cam", "gradcam",
                 "gradcam++", "guided-gradcam", "occlusion", "segment", "filters", "activations", "scan",
                 "patches", "neighbors", "tsne", "pca", "classviz", "neuron", "invert", "dream", "fgsm", "ifgsm",
                 "pgd-linf", "pgd-l2", "seed", "simba", "gram", "efros-leung", "style", "fast-style-train",
                 "fast-style-apply", "bias", "predict"):
        assert name in TECHNIQUES, name


@pytest.mark.parametrize("name", sorted(TECHNIQUES))
def test_defaults_are_the_function_signature(name):
    t = TECHNIQUES[name]
    fn = t.load()  # imports the module: the function exists
    assert callable(fn)
    sig = {p.name: p.default for p in inspect.signature(t.load()).parameters.values()
           if p.default is not inspect.Parameter.empty}
    defaults = t.defaults()
    assert set(defaults) == {o.name for o in t.options}
    for o in t.options:
        if o.name in sig:
            assert defaults[o.name] == sig[o.name], (name, o.name)  # the signature is the one source
        else:  # not a keyword of the function (a CLI --seed for a key): a default of its own
            assert o.default is not MISSING or o.required, (name, o.name)
        if o.required:
            continue
        # the default itself is a valid value
        assert o.check(defaults[o.name]) == defaults[o.name] or isinstance(defaults[o.name], (tuple, list))


def _numeric_options():
    for t in TECHNIQUES.values():
        for o in t.options:
            if o.kind in NUMERIC:
                yield pytest.param(t.name, o, id=f"{t.name}.{o.name}")


# upper bounds that deliberately stay open: the value is capped by the data (scan keeps at most
# the number of images), or it is bounded by a named run-time fact.
OPEN_ABOVE = {("scan", "topk"), ("scan", "batch")}


@pytest.mark.parametrize("name, option", list(_numeric_options()))
def test_every_numeric_option_has_bounds_that_refuse_bad_values(name, option):
    assert option.lo is not None, f"{name}.{option.name} has no lower bound"
    if (name, option.name) not in OPEN_ABOVE:
        assert option.hi is not None, f"{name}.{option.name} has no upper bound"
    context = {"images": 50, "num_classes": 1000}
    for bad in (float("nan"), float("inf"), float("-inf"), "nan", "abc"):
        bad = [bad] * option.nargs if isinstance(option.nargs, int) else bad
        with pytest.raises(JaxvizError, match=option.name):
            option.check(bad, context=context)
        with pytest.raises(JaxvizError, match=option.cli_flag):
            option.check(bad, cli=True, context=context)
    lo = Option._bound(option.lo, context)
    hi = Option._bound(option.hi, context)
    below = lo if option.lo_open else lo - (1 if option.kind is int else 1e-3 * max(1.0, abs(lo)))
    n = option.nargs if isinstance(option.nargs, int) else 1

    def many(v):
        return [v] * n if option.nargs is not None else v
    with pytest.raises(JaxvizError):
        option.check(many(below), context=context)
    if hi is not None:
        above = hi if option.hi_open else hi + (1 if option.kind is int else 1e-3 * max(1.0, abs(hi)))
        with pytest.raises(JaxvizError):
            option.check(many(above), context=context)
        with pytest.raises(JaxvizError):
            option.check(many(1e30), context=context)  # huge
    if option.kind is int:
        with pytest.raises(JaxvizError, match="whole number"):
            option.check(many(lo + 0.5 if not option.lo_open else lo + 1.5), context=context)
    # a value inside the bounds passes
    inside = lo + 1 if hi is None or hi - lo >= 2 else (lo + hi) / 2
    inside = int(inside) if option.kind is int else inside
    inside = option.choices[0] if option.choices else inside
    if option.nargs is not None:  # a list of values: each checked
        values = [inside] * (option.nargs if isinstance(option.nargs, int) else 2)
        assert list(option.check(values, context=context)) == values
        with pytest.raises(JaxvizError):
            option.check(values[:-1] + [float("nan")], context=context)
    else:
        assert option.check(inside, context=context) == inside


def test_check_messages_name_the_option_the_way_the_user_wrote_it():
    with pytest.raises(JaxvizError, match=r"^samples must be between 1 and 1000, got 0$"):
        check("smoothgrad", samples=0)
    with pytest.raises(JaxvizError, match=r"^--samples must be between 1 and 1000, got '0'$"):
        check("smoothgrad", cli=True, samples="0")
    with pytest.raises(JaxvizError, match=r"--noise must be a finite number"):
        check("smoothgrad", cli=True, noise="inf")
    with pytest.raises(JaxvizError, match="eps must be positive"):
        check("pgd-linf", eps=-0.1)
    with pytest.raises(JaxvizError, match="division by zero"):
        check("pgd-linf", cli=True, eps="8/0")
    assert check("pgd-linf", cli=True, eps="8/255")["eps"] == pytest.approx(8 / 255)
    with pytest.raises(JaxvizError, match="unknown basis 'pixle'.*did you mean pixel"):
        check("simba", basis="pixle")
    with pytest.raises(JaxvizError, match="has no option 'smaples'"):
        check("smoothgrad", smaples=3)
    with pytest.raises(JaxvizError, match="--topk must be between 1 and 1000"):
        check("predict", cli=True, context={"num_classes": 1000}, k="1001")
    assert check("predict", k=10 ** 6)["k"] == 10 ** 6  # no context: the named bound does not apply
    with pytest.raises(JaxvizError, match="perplexity"):
        check("tsne", perplexity=float("nan"))


def test_option_forms():
    resize = TECHNIQUES["gradcam"].option("resize")
    assert resize.check("none", cli=True) is None and resize.check(None) is None
    with pytest.raises(JaxvizError, match="not allowed"):
        TECHNIQUES["guided-gradcam"].option("resize").check("none", cli=True)
    window = TECHNIQUES["occlusion"].option("window")
    assert window.check((4, 6)) == (4, 6) and window.check(5) == 5
    with pytest.raises(JaxvizError, match="pair"):
        window.check((1, 2, 3))
    blend = TECHNIQUES["style"].option("style_blend")
    assert blend.check(["0.7,0.3"], cli=True) == [0.7, 0.3] == blend.check("0.7 0.3", cli=True)
    with pytest.raises(JaxvizError, match="--style-weights"):
        blend.check("1,nan", cli=True)
    unit = TECHNIQUES["neuron"].option("unit")
    with pytest.raises(JaxvizError, match="needs 2 values"):
        unit.check([1, 2, 3])
    # tracers pass through: an option given under jit is checked where it is still a number
    import jax
    assert jax.jit(lambda n: check("smoothgrad", noise=n)["noise"] * 2)(0.5) == 1.0


def test_get_suggests_close_names():
    assert get("efros", "texture").name == "efros-leung"  # an alias
    with pytest.raises(JaxvizError, match="unknown method 'gradcm'.*did you mean gradcam"):
        get("gradcm", "saliency")


def test_record_for_figures():
    r = record("gradcam", layer="fire9", images=4)
    assert r == {"technique": "gradcam", "layer": "fire9", "relu": True, "resize": "bilinear", "images": 4}
    r = record(("vanilla", "smoothgrad"), samples=50)
    assert r["techniques"] == "vanilla, smoothgrad" and r["smoothgrad.samples"] == 50
    assert r["smoothgrad.noise"] == 0.15
    with pytest.raises(JaxvizError, match="samples"):
        record("smoothgrad", samples=0)
    from jaxviz.gallery import FIGURES, figure

    @figure("_test_registry_record", "t", "c", technique="dream", octaves=3)
    def _fig(ctx):
        return None
    try:
        spec = FIGURES["_test_registry_record"]
        assert spec.techniques == ("dream",) and spec.params["octaves"] == 3
        assert spec.params["octave_scale"] == 1.4  # deepdream's signature default
    finally:
        del FIGURES["_test_registry_record"]


def _generated_flags(parser: argparse.ArgumentParser) -> set[str]:
    defaults = parser._defaults.get("_jaxviz_flags") or {}
    return set(defaults)


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_cli_flags_generated_are_the_registry():
    from jaxviz.cli import build_parser
    parser, _ = build_parser()
    commands = _subparsers(parser)
    for command, sub in commands.items():
        registered = techniques(command)
        if command == "fast-style":
            for action, name in (("train", "fast-style-train"), ("apply", "fast-style-apply")):
                inner = _subparsers(sub)[action]
                want = {o.cli_flag for o in TECHNIQUES[name].cli_options()}
                assert _generated_flags(inner) == want
                assert want <= set(inner._option_string_actions)
            continue
        want = {o.cli_flag for t in registered for o in t.cli_options()}
        assert _generated_flags(sub) == want, command
        assert want <= set(sub._option_string_actions), command
        # hand-written flags never duplicate a registry option of the command
        names = {o.name for t in registered for o in t.options}
        for flag, action in sub._option_string_actions.items():
            if flag not in want and hasattr(action, "dest") and not flag.startswith("-h"):
                assert action.dest not in names or action.dest in ("model", "out", "fit", "batch", "method",
                                                                    "target", "size", "seed"), (command, flag)


def test_help_shows_the_registry_defaults_and_one_entry_per_command(capsys):
    from jaxviz.cli import COMMANDS, build_parser, main
    parser, _ = build_parser()
    text = parser.format_help()
    for name in COMMANDS:
        assert sum(1 for line in text.splitlines() if line.strip().split(" ")[0] == name) == 1, name
    with pytest.raises(SystemExit):
        main(["saliency", "--help"])
    out = capsys.readouterr().out
    assert "(default 25)" in out and "[smoothgrad]" in out and "(default 16)" in out  # samples, --batch
    with pytest.raises(SystemExit):
        main(["dream", "--help"])
    assert "(default 1.4)" in capsys.readouterr().out  # deepdream's octave_scale
    with pytest.raises(SystemExit):
        main(["adversarial", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    # one --eps text for the five gradient attacks; only the methods with a default of their own listed
    assert out.count("budget in [0,1] pixel units") == 1 and "not set" not in out, out
    assert "(defaults simba 0.2)" in out


def test_a_flag_the_method_does_not_use_is_refused(capsys):
    from jaxviz.cli import main
    assert main(["saliency", "chelsea", "--method", "vanilla", "--samples", "3"]) == 2
    err = capsys.readouterr().err
    assert "--samples applies to --method smoothgrad, not vanilla" in err and len(err.splitlines()) == 1


def test_memory_estimate_refuses_absurd_sizes():
    from jaxviz.techniques import check_model_memory, estimate_memory
    from tests.conftest import make_tiny_model
    model = make_tiny_model()
    small = estimate_memory(model, 16, 1)
    assert small > 0 and estimate_memory(model, 16, 10) == 10 * small
    assert estimate_memory(model, 32, 1) > 3.5 * small  # ~ area
    check_model_memory(model, 16, 1, "tiny")
    with pytest.raises(JaxvizError, match="GiB of memory"):
        check_model_memory(model, 4096, 10_000, "tiny")
    assert math.isfinite(small)


def test_an_option_that_another_turns_off_is_refused_in_python_and_named_by_flag_on_the_cli():
    from jaxviz.classviz import class_visualization
    from jaxviz.inversion import invert
    from jaxviz.style import make_optimizer
    with pytest.raises(JaxvizError, match="clip_fraction=0.2 does nothing with blur_every=0"):
        class_visualization(None, None, 1, blur_every=0, clip_fraction=0.2)
    with pytest.raises(JaxvizError, match="lr=0.1 does nothing with optimizer=lbfgs"):
        invert(None, None, None, "x", optimizer="lbfgs", lr=0.1)
    with pytest.raises(JaxvizError, match="learning_rate=2.0 does nothing with optimizer=lbfgs-linesearch"):
        make_optimizer("lbfgs-linesearch", 2.0)
    with pytest.raises(JaxvizError, match="--lr 0.5 does nothing with --optimizer lbfgs"):
        TECHNIQUES["invert"].check(cli=True, lr=0.5, optimizer="lbfgs")
    # the settings that do act are accepted: the option off (0 / None) or the other value
    check("classviz", clip_fraction=0.0, blur_every=0)
    check("classviz", clip_fraction=0.2, blur_every=5)
    check("invert", lr=None, optimizer="lbfgs")
    check("invert", lr=0.1, optimizer="adam")
    make_optimizer("lbfgs-linesearch")
    make_optimizer("lbfgs", 0.5)


def test_attack_seed_exactly_where_the_method_starts_at_random():
    """--seed was an option of every attack; fgsm, ifgsm and the seed method ignored it."""
    from jaxviz.adversarial import METHODS
    for name, method in METHODS.items():
        has_seed = any(o.name == "seed" for o in TECHNIQUES[name].options)
        assert has_seed == method.random_start, name
    assert any(o.name == "seed" for o in TECHNIQUES["simba"].options)  # its direction order


def test_library_options_another_turns_off_are_refused(tiny_model):
    """deletion_insertion's blur_sigma and SimBA's freq_ratio did nothing with another baseline /
    basis and were accepted: now refused, their default (None) still fine."""
    import numpy as np
    from jaxviz.blackbox import simba
    from jaxviz.metrics import deletion_insertion
    x = np.random.default_rng(0).random((1, 16, 16, 3), np.float32)
    maps = x.mean(-1)
    with pytest.raises(JaxvizError, match="blur_sigma=2.0 does nothing with baseline=mean"):
        deletion_insertion(tiny_model, None, x, maps, steps=2, baseline="mean", blur_sigma=2.0)
    for baseline, sigma in (("mean", None), ("blur", None), ("blur", 2.0)):
        assert deletion_insertion(tiny_model, None, x, maps, steps=2, baseline=baseline,
                                  blur_sigma=sigma)["deletion"].shape == (1, 3)
    with pytest.raises(JaxvizError, match="freq_ratio=0.25 does nothing with basis=pixel"):
        simba(tiny_model, x, basis="pixel", freq_ratio=0.25, max_queries=4)
    assert simba(tiny_model, x, basis="dct", freq_ratio=0.25, max_queries=4).images.shape == x.shape


def test_given_only_rules_judge_what_the_user_gave_not_defaults():
    dream = TECHNIQUES["dream"]
    values = {**dream.defaults(), "octaves": 1}  # octave_scale keeps its default 1.4: fine
    dream.check_unused(values, cli=True, given={"octaves"})
    dream.check_unused(values)  # the Python path does not know what was given: not judged
    with pytest.raises(JaxvizError, match="--octave-scale 1.4 does nothing with --octaves 1"):
        dream.check_unused(values, cli=True, given={"octaves", "octave_scale"})
