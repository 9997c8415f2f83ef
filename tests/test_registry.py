import pytest

from ragcun.registry import (DuplicateComponentError, Registry, RegistryError, UnknownComponentError,
                             normalize_kind, normalize_name)
from ragcun.plugins import get_registry


def make_registry():
    reg = Registry()
    reg.register("loss", "isotropy", "x.y:Isotropy", provider="ragcun", aliases=("sigreg",))
    reg.register("loss", "contrastive", "x.y:Contrastive", provider="ragcun", aliases=("infonce",))
    reg.register("distance", "euclidean", "x.y:Euclid", provider="ragcun", aliases=("l2",))
    return reg


def test_lookup_normalizes_case_underscores_and_aliases():
    reg = make_registry()
    assert reg.get("loss", "Isotropy").name == "isotropy"
    assert reg.get("losses", "SIGREG").name == "isotropy"
    assert reg.get("distance", "L2").name == "euclidean"


def test_unknown_name_suggests_and_points_at_listing():
    reg = make_registry()
    with pytest.raises(UnknownComponentError) as info:
        reg.get("loss", "isotrpy")
    message = str(info.value)
    assert "did you mean 'isotropy'" in message
    assert "ragcun list losses" in message


def test_unknown_name_without_close_match_still_says_where_to_look():
    with pytest.raises(UnknownComponentError, match="ragcun list distances"):
        make_registry().get("distance", "zzzz")


def test_duplicate_names_both_providers():
    reg = make_registry()
    with pytest.raises(DuplicateComponentError) as info:
        reg.register("loss", "Isotropy", "other.mod:Iso", provider="ragcun-other")
    assert "ragcun-other" in str(info.value) and "by ragcun" in str(info.value)


def test_duplicate_alias_is_an_error_too():
    reg = make_registry()
    with pytest.raises(DuplicateComponentError, match="sigreg"):
        reg.register("loss", "my-sigreg", "m:C", provider="p", aliases=("sigreg",))


def test_same_name_in_different_kinds_is_fine():
    reg = make_registry()
    reg.register("head", "isotropy", "m:C", provider="p")
    assert reg.get("head", "isotropy").provider == "p"


@pytest.mark.parametrize("bad", ["", "has space!", "-leading"])
def test_bad_names_rejected(bad):
    with pytest.raises(RegistryError):
        Registry().register("loss", bad, "m:C", provider="p")


def test_bad_target_rejected():
    with pytest.raises(RegistryError, match="module:Class"):
        Registry().register("loss", "x", "not-a-path", provider="p")


def test_unknown_kind():
    with pytest.raises(RegistryError, match="choose one of"):
        normalize_kind("optimizer")


def test_listing_by_pattern():
    reg = make_registry()
    assert [e.name for e in reg.entries("loss")] == ["contrastive", "isotropy"]
    assert [e.name for e in reg.entries(None, "iso*")] == ["isotropy"]
    assert [e.name for e in reg.entries(None, "nce")] == ["contrastive"]  # substring over aliases
    assert [e.name for e in reg.entries(pattern="l2")] == ["euclidean"]


def test_lazy_target_reports_import_failure():
    reg = Registry()
    reg.register("head", "ghost", "ragcun_no_such_module:Head", provider="p")
    with pytest.raises(RegistryError, match="cannot be imported"):
        reg.get("head", "ghost").load()


def test_normalize_name_idempotent():
    for raw in ["Sq_Euclidean", "  gaussian ", "A B_c"]:
        once = normalize_name(raw)
        assert normalize_name(once) == once


def test_every_builtin_registration_loads_a_component_class_of_its_kind():
    """Every built-in entry (none listed by hand) imports to a class of its kind: a target pointing at the
    wrong object (a module, a function, a loss registered as a distance) fails here, not in a user's run."""
    import torch.nn as nn

    from ragcun.distances.base import Distance
    from ragcun.losses.base import Loss
    from ragcun.registry import KINDS

    bases = {"encoder": nn.Module, "head": nn.Module, "loss": Loss, "distance": Distance}
    reg = get_registry()
    builtins = [e for kind in KINDS for e in reg.entries(kind) if e.provider == "ragcun"]
    # the components the README and docs promise are among them
    assert {("encoder", "hf"), ("encoder", "all-minilm-l6-v2"), ("head", "gaussian"), ("head", "identity"),
            ("loss", "contrastive"), ("loss", "isotropy"), ("distance", "euclidean"), ("distance", "cosine"),
            ("evaluator", "beir")} <= {(e.kind, e.name) for e in builtins}
    for entry in builtins:
        cls = entry.load()
        assert isinstance(cls, type), f"{entry.kind} {entry.name}: {cls!r} is not a class"
        if entry.kind in bases:
            assert issubclass(cls, bases[entry.kind]), f"{entry.kind} {entry.name}: {cls} is no {bases[entry.kind]}"
        else:  # an evaluator is called with the model and returns its report
            assert "__call__" in vars(cls), entry.name


@pytest.mark.parametrize("kind,metadata,hint", [
    ("head", {"provide": ("mean",)}, "did you mean provides=?"),
    ("loss", {"wrap": True}, "did you mean wraps=?"),
    ("distance", {"wraps": True}, "for a distance these extras: none"),
    ("loss", {"teacher_scores": True}, "for a loss these extras: wraps"),
])
def test_misspelt_or_unknown_registration_metadata_is_an_error(kind, metadata, hint):
    reg = Registry()
    with pytest.raises(RegistryError, match="unknown metadata") as info:
        reg.register(kind, "thing", "x.y:Thing", provider="some-plugin", **metadata)
    assert "some-plugin" in str(info.value) and hint in str(info.value)
    assert reg.entries(kind) == []  # nothing half-registered


def test_known_registration_metadata_is_kept():
    reg = Registry()
    entry = reg.register("loss", "wrapper", "x.y:Wrapper", provider="some-plugin", wraps=True)
    assert entry.extra == {"wraps": True}


def test_registered_provides_and_needs_agree_with_the_built_components():
    """The metadata `ragcun list` shows is what the component, built with its default settings, declares."""
    from ragcun.components import build
    from ragcun.plugins import get_registry

    registry = get_registry()
    checked = 0
    for entry in registry.entries("head"):
        if entry.provider != "ragcun":
            continue
        head = build("head", entry.name, in_dim=8)
        assert set(entry.provides) == set(head.provides), entry.name
        checked += 1
    for kind in ("distance", "loss"):
        for entry in registry.entries(kind):
            if entry.provider != "ragcun":
                continue
            if kind == "loss" and entry.extra.get("wraps"):  # a wrapper (matryoshka:LOSS) needs its inner loss
                from ragcun.losses.composite import build_loss

                component = build_loss(f"{entry.name}:contrastive", dim=8).losses[entry.name]
            else:
                component = build(kind, entry.name, dim=8) if kind == "loss" else build(kind, entry.name)
            assert set(entry.needs) == set(getattr(component, "needs", {"mean"})), entry.name
            checked += 1
    assert checked >= 17
