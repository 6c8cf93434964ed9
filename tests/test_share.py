"""Models out and back in: export folders, the Hugging Face Hub (offline), every reading command on every source,
and interpolation."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from sagan import Generator
from sagan.checkpoint import load_generator, resolve_checkpoint
from sagan.cli import main
from sagan.interpolation import interpolate, interpolation_inputs, slerp
from sagan.sampling import draw_inputs

hub = pytest.importorskip("huggingface_hub", reason="the hub extra is not installed (pip install 'sagan-pytorch[hub]')")


def _same(G: Generator, H: Generator) -> bool:
    z, y = torch.randn(3, G.z_dim), torch.tensor([0, 1, 2]) if G.num_classes else None
    return torch.equal(G(z, y), H(z, y))


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-sagan"
    assert main(["export", tiny_run, "--out", str(out)]) == 0
    return out


def fill_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "0" * 40) -> None:
    """The layout huggingface_hub keeps downloads in: blobs, a snapshot per commit, and refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folder / name, snapshot / name)


@pytest.fixture
def offline_hub(exported, tmp_path, monkeypatch) -> Path:
    """HF_HUB_OFFLINE with a Hub cache holding someone/tiny-sagan (the export), for this process."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    fill_hub_cache(cache, "someone/tiny-sagan", exported)
    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_CACHE", str(cache))):
        monkeypatch.setenv(name, value)
        monkeypatch.setattr(constants, name, value if name == "HF_HUB_CACHE" else True)
    return cache


def test_a_generator_is_a_hub_mixin_and_round_trips_through_a_folder(tiny_run, tmp_path):
    G, state = load_generator(tiny_run)
    assert isinstance(G, hub.PyTorchModelHubMixin)
    G.save_pretrained(tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "Generator.from_pretrained" in (tmp_path / "g" / "README.md").read_text()
    H = Generator.from_pretrained(tmp_path / "g")
    assert not H.training and _same(G, H)
    assert H.class_names == state.classes and len(H.class_names) == G.num_classes > 0
    assert not list((tmp_path / "g").glob("*.tmp*"))  # atomic writes leave no temporaries


def test_load_by_repo_id_from_a_hub_cache_offline(exported, offline_hub):
    G = Generator.from_pretrained("someone/tiny-sagan")
    assert _same(G, Generator.from_pretrained(exported))
    assert _same(G, Generator.from_pretrained("someone/tiny-sagan", cache_dir=offline_hub))
    with pytest.raises(ValueError, match=r"someone/absent.*HF_HUB_OFFLINE"):
        Generator.from_pretrained("someone/absent")


def test_a_hub_source_can_name_a_revision(tiny_run, exported, offline_hub, tmp_path):
    """owner/name@v1 reads the files of the commit that refs/v1 names in the cache, not main's."""
    other = tmp_path / "other"
    Generator(32, num_classes=6, ch=8).save_pretrained(other)  # another generator, tagged v1
    repo = offline_hub / "models--someone--tiny-sagan"
    (repo / "refs" / "v1").write_text("3" * 40)
    (repo / "snapshots" / ("3" * 40)).mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(other / name, repo / "snapshots" / ("3" * 40) / name)
    pictures = []
    for source in ("someone/tiny-sagan", "someone/tiny-sagan@v1", str(other)):
        assert main(["sample", source, "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
        pictures.append(Image.open(tmp_path / "s.png").tobytes())
    assert pictures[0] != pictures[1] and pictures[1] == pictures[2]


def test_a_hub_model_without_safetensors_is_never_unpickled(exported, offline_hub, monkeypatch):
    """A cached repository holding config.json and a pickled pytorch_model.bin: refused, and nothing torch.loads it."""
    repo = offline_hub / "models--someone--pickled"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("1" * 40)
    snapshot = repo / "snapshots" / ("1" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(exported / "config.json", snapshot / "config.json")
    torch.save({"x": torch.zeros(1)}, snapshot / "pytorch_model.bin")
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(ValueError, match="someone/pickled"):
        Generator.from_pretrained("someone/pickled")
    assert loads == []


def test_every_reading_command_reads_every_kind_of_source(tiny_run, exported, offline_hub, tmp_path):
    """Run directory, checkpoint, export folder and Hub id (offline, from a cache the test fills): the same images."""
    checkpoint = str(resolve_checkpoint(tiny_run)[0])
    pictures: dict[str, list[bytes]] = {}
    for i, source in enumerate([tiny_run, checkpoint, str(exported), "someone/tiny-sagan"]):
        out = tmp_path / f"s{i}"
        for argv in (
            ["sample", source, "--n", "6", "--out", f"{out}-sample.png", "--class", "1"],
            ["interpolate", source, "--rows", "2", "--n", "3", "--out", f"{out}-interpolate.png"],
            ["attention", source, "--out", f"{out}-attention.png"],
        ):
            assert main(argv) == 0, argv
            pictures.setdefault(argv[0], []).append(Image.open(f"{out}-{argv[0]}.png").tobytes())
        assert main(["export", source, "--out", f"{out}-export"]) == 0
        assert _same(Generator.from_pretrained(exported), Generator.from_pretrained(f"{out}-export"))
    assert all(len(set(p)) == 1 for p in pictures.values())


def exit_code(argv: list[str]) -> int:
    """main's return value, or argparse's exit code for a flag it refuses."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def test_reading_commands_say_what_an_export_lacks(exported, tmp_path, capsys):
    for argv, message in [
        (["attention", str(exported), "--layer", "D.attn16"], "holds the generator only.*run directory"),
        (["sample", str(exported), "--no-ema"], "holds one generator"),
        (["sample", str(exported), "--class", "hexagon"], "not a class of this generator; its classes are"),
        (["sample", str(tmp_path / "nothing")], "no such run directory, checkpoint or export folder"),
    ]:
        assert main([*argv, "--out", str(tmp_path / "x.png")]) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and re.search(message, lines[0]), (argv, lines)


def test_eval_of_an_export_needs_data_and_uses_it(exported, inception_weights, capsys):
    assert main(["eval", str(exported), "--inception-weights", inception_weights, "--n", "8"]) == 2
    assert "does not record its training data: pass --data" in capsys.readouterr().err
    argv = ["eval", str(exported), "--inception-weights", inception_weights, "--n", "16", "--data", "shapes"]
    assert main([*argv, "--metrics", "fid"]) == 0
    assert f"export folder {exported}, 16 samples: FID" in capsys.readouterr().out


def test_export_push_to_hub_uploads_the_exported_folder(tiny_run, tmp_path, monkeypatch, capsys):
    uploaded = {}

    def create_repo(self, repo_id, private=False, exist_ok=False, **kw):
        uploaded["private"] = private
        return hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, **kw):
        uploaded[repo_id] = sorted(p.name for p in Path(folder_path).iterdir())
        uploaded["card"] = (Path(folder_path) / "README.md").read_text()

    monkeypatch.setattr(hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(hub.HfApi, "upload_folder", upload_folder)
    out = tmp_path / "export"
    assert main(["export", tiny_run, "--out", str(out), "--push-to-hub", "me/shapes-sagan", "--private"]) == 0
    assert uploaded["me/shapes-sagan"] == ["README.md", "config.json", "model.safetensors"]
    assert uploaded["private"] is True
    assert 'Generator.from_pretrained("me/shapes-sagan")' in uploaded["card"]
    assert "https://huggingface.co/me/shapes-sagan" in capsys.readouterr().out
    assert main(["export", tiny_run, "--out", str(out), "--push-to-hub", "not a repo"]) == 2
    capsys.readouterr()

    def no_network(self, **kw):
        raise ConnectionError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(hub.HfApi, "create_repo", no_network)
    assert main(["export", tiny_run, "--out", str(out), "--push-to-hub", "me/shapes-sagan"]) == 2
    err = capsys.readouterr().err.strip()
    assert "could not push" in err and "export itself is complete" in err and len(err.splitlines()) == 1


def test_without_the_hub_extra_local_folders_still_work(exported, tmp_path):
    """huggingface_hub made unimportable: folders load and save, Hub ids and pushes say what to install."""
    code = f"""
import sys
sys.modules["huggingface_hub"] = None
from sagan import Generator
from sagan.hub import HUB_AVAILABLE
assert not HUB_AVAILABLE
G = Generator.from_pretrained({str(exported)!r})
G.save_pretrained({str(tmp_path / "again")!r})
H = Generator.from_pretrained({str(tmp_path / "again")!r})
import torch
z = torch.randn(2, G.z_dim); y = torch.tensor([0, 1])
assert torch.equal(G(z, y), H(z, y))
for call in (lambda: Generator.from_pretrained("someone/model"), lambda: G.push_to_hub("me/x")):
    try:
        call()
    except ValueError as err:
        assert "pip install 'sagan-pytorch[hub]'" in str(err), err
    else:
        raise AssertionError("no error")
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


# -- interpolation -------------------------------------------------------------------------------


def test_slerp_keeps_the_ends_and_walks_the_great_circle():
    torch.manual_seed(0)
    a, b, t = torch.randn(5, 64, dtype=torch.float64), torch.randn(5, 64, dtype=torch.float64), torch.rand(7)
    path = slerp(a, b, torch.cat([torch.tensor([0.0, 1.0]), t]))
    torch.testing.assert_close(path[:, 0], a)
    torch.testing.assert_close(path[:, 1], b)
    # every point lies in the plane of a and b, at the angle t * omega from a, with the norm interpolated linearly
    ua, ub = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.arccos((ua * ub).sum(1))
    for k, tk in enumerate(t.double(), start=2):
        p = path[:, k]
        up = p / p.norm(dim=1, keepdim=True)
        torch.testing.assert_close(torch.arccos((ua * up).sum(1).clamp(-1, 1)), tk * omega)
        torch.testing.assert_close(p.norm(dim=1), (1 - tk) * a.norm(dim=1) + tk * b.norm(dim=1))
    torch.testing.assert_close(slerp(a, a, t)[:, 3], a)  # identical ends: no division by sin(0)


def test_interpolation_rows_start_at_the_seeds_images_and_do_not_depend_on_the_row_count():
    G = Generator(32, num_classes=5, ch=8).eval()
    walks = interpolate(G, rows=3, steps=5, seed=7)
    z, y = draw_inputs(0, 6, G.z_dim, 5, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(walks[:, 0], G(z[0::2], y[0::2]))  # row r from image 2r ...
        torch.testing.assert_close(walks[:, -1], G(z[1::2], y[0::2]))  # ... to image 2r + 1's noise, same class
    assert torch.equal(interpolate(G, rows=2, steps=5, seed=7), walks[:2])
    assert not torch.equal(interpolate(G, rows=2, steps=5, seed=8), walks[:2])


def test_class_interpolation_moves_the_class_at_fixed_noise():
    G = Generator(32, num_classes=5, ch=8, hierarchical_z=False).eval()
    walks = interpolate(G, rows=2, steps=4, seed=3, class_index=1, to_class=4)
    z, _ = draw_inputs(0, 4, G.z_dim, 5, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(walks[:, 0], G(z[0::2], torch.tensor([1, 1])))
        torch.testing.assert_close(walks[:, -1], G(z[0::2], torch.tensor([4, 4])))
        # a point between: the BN embeddings are the weighted sum of both classes' rows
        _, weights = interpolation_inputs(G.z_dim, 5, rows=2, steps=4, seed=3, class_index=1, to_class=4)
        torch.testing.assert_close(weights[1], torch.tensor([0, 2 / 3, 0, 0, 1 / 3]))
    shared = Generator(32, num_classes=5, ch=8, shared_embedding=True).eval()  # BigGAN's shared embedding too
    ends = interpolate(shared, rows=1, steps=2, seed=3, class_index=0, to_class=2)
    with torch.no_grad():
        torch.testing.assert_close(ends[0, 1], shared(z[:1], torch.tensor([2]))[0])


def test_interpolate_command_writes_the_grid_and_a_looping_gif(tiny_run, tmp_path):
    out, gif = tmp_path / "walk.png", tmp_path / "walk.gif"
    argv = ["interpolate", tiny_run, "--rows", "2", "--n", "4", "--out", str(out), "--gif", str(gif), "--seed", "2"]
    assert main(argv) == 0
    R = 32
    assert Image.open(out).size == (4 * (R + 2) + 2, 2 * (R + 2) + 2)
    animation = Image.open(gif)
    assert animation.n_frames == 4 + 2  # forwards, then back without repeating the ends
    first = Image.open(out).tobytes()
    assert main(argv) == 0 and Image.open(out).tobytes() == first  # deterministic by seed
    for bad in (["--to-class", "9"], ["--n", "1"], ["--class", "-1"]):
        assert exit_code(["interpolate", tiny_run, "--out", str(out), *bad]) == 2
    unconditional = tmp_path / "u"
    Generator(32, ch=8).save_pretrained(unconditional)
    assert main(["interpolate", str(unconditional), "--out", str(out), "--to-class", "1"]) == 2
    assert main(["interpolate", str(unconditional), "--out", str(out)]) == 0


def test_config_json_of_an_export_is_checked(exported, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    config = json.loads((bad / "config.json").read_text())
    for text, message in [
        (json.dumps({**config, "classes": ["only-one"]}), "class names"),
        ("[1, 2]", "is a list, not a sagan export's config"),
        ("{not json", "is not valid JSON"),
        (json.dumps({"resolution": 32, "ch": 8}), "without a 'generator' entry"),  # the mixin's flat layout
    ]:
        (bad / "config.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            Generator.from_pretrained(bad)
        assert main(["sample", str(bad), "--out", str(tmp_path / "x.png")]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_class_is_given_by_name_or_index(tiny_run, tmp_path):
    out = [tmp_path / "by-name.png", tmp_path / "by-index.png"]
    assert main(["sample", tiny_run, "--n", "4", "--class", "triangle", "--out", str(out[0])]) == 0
    assert main(["sample", tiny_run, "--n", "4", "--class", "2", "--out", str(out[1])]) == 0
    assert Image.open(out[0]).tobytes() == Image.open(out[1]).tobytes()


def test_the_readme_hub_round_trip_runs(tiny_run, tmp_path, monkeypatch, offline_hub):
    """The README's five lines, run as written: export, save, push (to a stand-in Hub that fills the cache), load."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Sharing a generator") :]
    code = section[section.index("```python") + len("```python") : section.index("```", section.index("```python") + 9)]
    assert len([line for line in code.splitlines() if line.strip()]) == 5

    def upload_folder(self, repo_id, folder_path, **kw):
        fill_hub_cache(offline_hub, repo_id, Path(folder_path), commit="2" * 40)

    monkeypatch.setattr(hub.HfApi, "create_repo", lambda self, repo_id, **kw: hub.RepoUrl(f"https://hf.co/{repo_id}"))
    monkeypatch.setattr(hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.chdir(tmp_path)
    assert main(["export", tiny_run, "--out", "export-dir"]) == 0
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (the README's own code, run as written)
    assert scope["images"].shape == (16, 3, 32, 32) and scope["labels"].shape == (16,)
    assert (tmp_path / "my-sagan" / "model.safetensors").is_file()
