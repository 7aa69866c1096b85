"""Tests of the procedural CT/MRI phantoms (nnssl.data.phantoms) and the nnssl_phantoms command."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnssl.cli.phantoms import main as phantoms_main
from nnssl.data.phantoms import DATASETS, Grid, S, make_subject, render_case, render_ct, render_mri, write_datasets
from nnssl.data.phantoms import datasets as ds_mod
from nnssl.data.phantoms.anatomy import BODY_STRUCTS
from nnssl.data.phantoms.preview import write_preview
from nnssl.data.phantoms.tissues import TISSUES

SMALL = dict(size=(32, 40, 40), spacing=(8.0, 8.0, 8.0))  # 256 x 320 x 320 mm field of view
LABELED = [901, 902, 903, 904, 905]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """All labelled datasets, 3 small cases each, written once for the module."""
    root = tmp_path_factory.mktemp("raw")
    write_datasets(root, LABELED, cases=3, progress=False, **SMALL)
    return root


def _read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


# --- determinism ----------------------------------------------------------------------------------------

def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = write_datasets(tmp_path / "a", [903], cases=2, seed=5, progress=False, **SMALL)[0]
    b = write_datasets(tmp_path / "b", [903], cases=2, seed=5, progress=False, **SMALL)[0]
    c = write_datasets(tmp_path / "c", [903], cases=2, seed=6, progress=False, **SMALL)[0]
    files = sorted(p.relative_to(a) for p in a.rglob("*.nii.gz"))
    assert len(files) == 4
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    img_a, _ = _read(a / files[0])
    img_c, _ = _read(c / files[0])
    assert img_a.shape == img_c.shape and not np.array_equal(img_a, img_c)


def test_case_and_dataset_change_the_subject():
    i0, l0, _ = render_case(901, 0, seed=0, **SMALL)
    i1, l1, _ = render_case(901, 1, seed=0, **SMALL)
    j0, _, _ = render_case(903, 0, seed=0, **SMALL)  # other dataset, same index: another subject (no leakage)
    assert not np.array_equal(i0, i1) and not np.array_equal(l0, l1) and not np.array_equal(i0, j0)
    again, lab_again, _ = render_case(901, 0, seed=0, **SMALL)
    assert np.array_equal(i0, again) and np.array_equal(l0, lab_again)


def test_between_subject_variation_of_organ_volumes():
    vols = []
    for case in range(6):
        _, lab, g = render_case(901, case, seed=0, **SMALL)
        vols.append([(lab == k).sum() * np.prod(g.spacing) / 1000 for k in (1, 2, 3)])  # ml
    vols = np.array(vols)
    cv = vols.std(0) / vols.mean(0)
    assert np.all(cv > 0.05), cv  # shapes and sizes really vary between subjects
    assert 800 < np.median(vols[:, 0]) < 3000, vols[:, 0]  # adult liver volume order of magnitude (ml)


# --- dataset layout -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset_id", LABELED)
def test_dataset_json_agrees_with_files(raw, dataset_id):
    spec = DATASETS[dataset_id]
    folder = raw / spec.folder_name()
    js = json.loads((folder / "dataset.json").read_text())
    assert js["channel_names"] == {"0": spec.modality}
    assert js["file_ending"] == ".nii.gz" and js["numTraining"] == 3
    assert js["labels"]["background"] == 0 and sorted(js["labels"].values()) == list(range(len(spec.labels) + 1))
    groups = js["nnssl_structure_groups"]
    assert set(groups) == {"small", "large", "gastrointestinal", "tumour"}
    grouped = [n for names in groups.values() for n in names]
    assert sorted(grouped) == sorted(k for k in js["labels"] if k != "background")  # every label exactly once
    images = sorted((folder / "imagesTr").glob("*_0000.nii.gz"))
    labels = sorted((folder / "labelsTr").glob("*.nii.gz"))
    assert len(images) == len(labels) == 3
    for im_path, lab_path in zip(images, labels):
        assert im_path.name.replace("_0000.nii.gz", ".nii.gz") == lab_path.name
        lab, lab_img = _read(lab_path)
        im, im_img = _read(im_path)
        assert im.shape == lab.shape == SMALL["size"]
        assert np.allclose(im_img.GetSpacing(), SMALL["spacing"][::-1]) and lab_img.GetSpacing() == im_img.GetSpacing()
        # every declared label appears in every case at this resolution, and nothing undeclared
        assert set(np.unique(lab).tolist()) == set(js["labels"].values()), lab_path.name
    if spec.modality == "CT":
        assert im.min() >= -1024 and im.min() < -900  # air in HU


class _InlinePool:
    """Stands in for the spawn pool inside verify_dataset_integrity (each spawn re-imports torch: ~8 s)."""

    def __init__(self, *_):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def starmap(self, fn, args):
        return [fn(*a) for a in args]


def test_verify_dataset_integrity_passes(raw, monkeypatch, tmp_path):
    from types import SimpleNamespace

    from nnunetv2.experiment_planning import verify_dataset_integrity as vdi

    # once exactly as nnU-Net runs it (a real process pool) ...
    vdi.verify_dataset_integrity(str(raw / DATASETS[901].folder_name()), num_processes=1)  # raises on problems
    # ... and the same checks in-process for every labelled dataset
    monkeypatch.setattr(vdi, "multiprocessing", SimpleNamespace(get_context=lambda *_: SimpleNamespace(Pool=_InlinePool)))
    for d in LABELED:
        vdi.verify_dataset_integrity(str(raw / DATASETS[d].folder_name()), num_processes=1)
    # the checks are live: an undeclared label value makes them fail (on a copy: the fixture is shared)
    import shutil

    copy = tmp_path / DATASETS[903].folder_name()
    shutil.copytree(raw / copy.name, copy)
    bad = copy / "labelsTr" / "PhantomCTLiverTumour_0000.nii.gz"
    arr, img = _read(bad)
    arr[0, 0, 0] = 7
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(bad))
    with pytest.raises(RuntimeError, match="unexpected labels"):
        vdi.verify_dataset_integrity(str(copy), num_processes=1)


def test_images_only_dataset_layout(tmp_path):
    folder = write_datasets(tmp_path, [900], cases=2, progress=False, **SMALL)[0]
    assert folder.name == "Dataset900_PhantomCTPretrain"
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "imagesTr"]
    js = json.loads((folder / "dataset.json").read_text())
    assert js["images_only"] is True and js["labels"] == {"background": 0}
    assert js["channel_names"] == {"0": "CT"} and js["numTraining"] == 2 and js["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        "PhantomCTPretrain_0000_0000.nii.gz", "PhantomCTPretrain_0001_0000.nii.gz"]
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left behind


def test_destination_id_remap(tmp_path):
    folder = write_datasets(tmp_path, ["901:511"], cases=1, progress=False, **SMALL)[0]
    assert folder.name == "Dataset511_PhantomCTOrgans"
    ref, _, _ = render_case(901, 0, seed=0, **SMALL)
    img, _ = _read(folder / "imagesTr" / "PhantomCTOrgans_0000_0000.nii.gz")
    assert np.array_equal(img, ref)  # same data, other id


# --- anatomy and appearance -------------------------------------------------------------------------------

def test_organs_inside_body_and_tumours_inside_host():
    for case in range(3):
        subj = make_subject(0, case, dataset=905, tumour_hosts=("liver", "kidney"))
        grid = Grid((40, 48, 48), (6.5, 6.5, 6.5), subj.fov_center)
        _, smap = render_ct(subj, grid, noise=False)
        body = ndimage.binary_fill_holes(np.isin(smap, BODY_STRUCTS))
        depth = ndimage.distance_transform_edt(body, sampling=grid.spacing)
        for organ in (S.LIVER, S.SPLEEN, S.KIDNEY_R, S.KIDNEY_L, S.STOMACH, S.PANCREAS, S.GALLBLADDER, S.AORTA):
            m = smap == organ
            assert m.any(), organ.name
            assert depth[m].min() >= 6.0, organ.name  # inside the skin, fat and muscle wall
        # tumours were painted only over their host: without the tumour layers, those voxels are host tissue
        assert subj.tumours and {t.host for t in subj.tumours} >= {"liver", "kidney"}
        plain = make_subject(0, case, dataset=905, tumour_hosts=("liver", "kidney"))
        plain.layers = [lay for lay in plain.layers if not lay.name.startswith(("tumour_", "necrosis_"))]
        _, smap0 = render_ct(plain, grid, noise=False)
        for tum, hosts in ((S.LIVER_TUMOUR, {S.LIVER}), (S.KIDNEY_R_TUMOUR, {S.KIDNEY_R}),
                           (S.KIDNEY_L_TUMOUR, {S.KIDNEY_L})):
            under = set(np.unique(smap0[smap == tum]).tolist())
            assert under <= {int(h) for h in hosts}, (tum.name, under)


def _mean(img: np.ndarray, smap: np.ndarray, struct: int, erode: int = 1) -> float:
    m = ndimage.binary_erosion(smap == struct, iterations=erode) if erode else smap == struct
    assert m.sum() > 5, struct
    return float(np.median(img[m]))


def test_ct_hounsfield_units():
    assert 40 <= TISSUES["liver"].hu <= 70  # unenhanced table value
    subj = make_subject(0, 1, dataset=904, region="thorax", tumour_hosts=("lung",))
    grid = Grid((40, 48, 48), (6.0, 6.5, 6.5), subj.fov_center)
    img, smap = render_ct(subj, grid)
    lung = np.median(img[ndimage.binary_erosion(np.isin(smap, (S.LUNG_R, S.LUNG_L)))])
    assert -900 <= lung <= -700, lung
    abd = make_subject(0, 2, dataset=901)
    g2 = Grid((40, 48, 48), (6.5, 6.5, 6.5), abd.fov_center)
    native, sm = render_ct(abd, g2, enhanced=False, noise=False)
    assert 40 <= _mean(native, sm, S.LIVER) <= 70
    assert -130 <= _mean(native, sm, S.SUBCUT_FAT) <= -70
    assert _mean(native, sm, S.VERTEBRA, erode=0) > 150
    # contrast enhancement raises vessels and organs above their native value, by a subject-specific amount
    enh, _ = render_ct(abd, g2, enhanced=True, noise=False)
    gain = _mean(enh, sm, S.AORTA) - _mean(native, sm, S.AORTA)
    expected = abd.arterial * abd.tissues["blood_arterial"].art + abd.venous * abd.tissues["blood_arterial"].ven
    assert gain == pytest.approx(expected, abs=25)
    # noise: a CT-like standard deviation in homogeneous fat
    noisy, _ = render_ct(abd, g2, enhanced=False, noise=True)
    fat = ndimage.binary_erosion(sm == S.SUBCUT_FAT)
    assert 0.5 * abd.ct_noise_hu < float(np.std(noisy[fat] - native[fat])) < 1.5 * abd.ct_noise_hu


def test_partial_volume_at_boundaries():
    subj = make_subject(0, 0, dataset=901)
    grid = Grid((32, 40, 40), (8.0, 8.0, 8.0), subj.fov_center)
    img, smap = render_ct(subj, grid, enhanced=False, noise=False)
    # voxels at the skin have values between air (-1000) and fat (-100): mixtures, not a hard step
    edge = np.isin(smap, BODY_STRUCTS) & ~ndimage.binary_erosion(np.isin(smap, BODY_STRUCTS))
    assert np.mean((img[edge] > -900) & (img[edge] < -150)) > 0.3


def test_mri_tissue_ordering_differs_from_ct():
    subj = make_subject(0, 3, dataset=902)
    grid = Grid((48, 64, 64), (5.0, 5.0, 5.0), subj.fov_center)
    ct, sm = render_ct(subj, grid, enhanced=False, noise=False)
    t1, sm1 = render_mri(subj, grid, "T1", noise=False)
    t2, sm2 = render_mri(subj, grid, "T2", noise=False)
    assert np.array_equal(sm, sm1) and np.array_equal(sm, sm2)  # same anatomy on the same grid
    structs = (S.SUBCUT_FAT, S.LIVER, S.SPLEEN, S.GALLBLADDER, S.MUSCLE)
    ct_m, t1_m, t2_m = ({s: _mean(img, sm, s, erode=0) for s in structs} for img in (ct, t1, t2))
    assert ct_m[S.SUBCUT_FAT] < ct_m[S.LIVER] and t1_m[S.SUBCUT_FAT] > t1_m[S.LIVER]  # fat: dark CT, bright T1
    assert ct_m[S.GALLBLADDER] < ct_m[S.LIVER] and t2_m[S.GALLBLADDER] > t2_m[S.LIVER]  # bile bright on T2
    assert t1_m[S.LIVER] > t1_m[S.SPLEEN] and t2_m[S.SPLEEN] > t2_m[S.LIVER]  # liver/spleen swap between T1 and T2
    order = lambda m: [k for k, _ in sorted(m.items(), key=lambda kv: kv[1])]
    assert order(ct_m) != order(t1_m) and order(ct_m) != order(t2_m) and order(t1_m) != order(t2_m)


def test_mri_bias_noise_and_scale():
    subj = make_subject(0, 4, dataset=902)
    grid = Grid((32, 40, 40), (8.0, 8.0, 8.0), subj.fov_center)
    img, sm = render_mri(subj, grid, "T1")
    assert img.dtype == np.int16 and img.min() >= 0
    # Rician noise: background air is not zero but Rayleigh-distributed with mean sigma*sqrt(pi/2)
    air = ndimage.binary_erosion(sm == S.BACKGROUND, iterations=2)
    sigma = subj.mri_noise * subj.mri_scale
    assert np.mean(img[air]) == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.25)
    other = make_subject(0, 5, dataset=902)
    assert other.mri_scale != subj.mri_scale  # arbitrary, subject-specific intensity scale
    clean, _ = render_mri(subj, grid, "T1", noise=False)
    nobias = subj.bias
    z, y, x = grid.axes()
    field = np.exp(nobias(z[:, None, None], y[None, :, None], x[None, None, :]))
    assert field.max() / field.min() > 1.1  # a real, smooth multiplicative bias across the volume
    # thick slices: averaging 3 sub-slices through the slice thickness blurs along z only (same labels, same grid)
    thick, sm3 = render_mri(subj, grid, "T1", noise=False, slice_supersample=3)
    assert thick.shape == clean.shape and np.array_equal(sm3, sm)
    assert 0 < np.mean(thick != clean) and np.abs(thick.astype(float) - clean).mean() < 0.1 * clean.mean()
    with pytest.raises(ValueError, match="odd"):
        render_mri(subj, grid, "T1", slice_supersample=2)
    with pytest.raises(ValueError, match="sequence"):
        render_mri(subj, grid, "PD")


# --- bad input ---------------------------------------------------------------------------------------------

def test_existing_dataset_refused_unless_overwrite(tmp_path):
    write_datasets(tmp_path, [901], cases=1, progress=False, **SMALL)
    (tmp_path / "Dataset903_SomethingElse").mkdir()  # same id, other name: still a clash for nnU-Net
    with pytest.raises(FileExistsError, match="Dataset901_PhantomCTOrgans"):
        write_datasets(tmp_path, [901], cases=1, progress=False, **SMALL)
    with pytest.raises(FileExistsError, match="Dataset903_SomethingElse"):
        write_datasets(tmp_path, [904, 903], cases=1, progress=False, **SMALL)
    assert not (tmp_path / "Dataset904_PhantomCTLungTumour").exists()  # checked before anything was written
    write_datasets(tmp_path, [903], cases=2, overwrite=True, progress=False, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset901_PhantomCTOrgans", "Dataset903_PhantomCTLiverTumour"]
    assert len(list((tmp_path / "Dataset903_PhantomCTLiverTumour" / "imagesTr").iterdir())) == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=4, spacing=(8, 8, 8)), "at least 8 voxels"),
    (dict(size=(32, 32), spacing=(8, 8, 8)), "three entries"),
    (dict(size=(32, 32, 32.5), spacing=(8, 8, 8)), "integers"),
    (dict(size=32, spacing=(0, 8, 8)), "impossible"),
    (dict(size=32, spacing=(8, float("nan"), 8)), "impossible"),
    (dict(size=32, spacing=(1, 1, 1)), "field of view"),
    (dict(size=(2000, 2000, 2000), spacing=(1, 1, 1)), "voxels"),
    (dict(cases=0), "positive integer"),
    (dict(seed=-1), "non-negative"),
])
def test_bad_arguments_raise_and_write_nothing(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_datasets(tmp_path, [901], progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_unknown_dataset_and_duplicates(tmp_path):
    with pytest.raises(ValueError, match="unknown phantom dataset"):
        write_datasets(tmp_path, [42], progress=False)
    with pytest.raises(ValueError, match="more than once"):
        write_datasets(tmp_path, [901, "903:901"], progress=False)


def test_unwritable_target(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError):
        write_datasets(afile, [901], cases=1, progress=False, **SMALL)
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(PermissionError, match="not writable"):
                write_datasets(ro, [901], cases=1, progress=False, **SMALL)
        finally:
            ro.chmod(0o700)


def test_crash_leaves_nothing_half_written(tmp_path, monkeypatch):
    real = ds_mod.render_case
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(ds_mod, "render_case", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        write_datasets(tmp_path, [901], cases=3, progress=False, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_missing_labels_warn_for_tiny_field_of_view(tmp_path):
    with pytest.warns(UserWarning, match="appear in no case"):
        write_datasets(tmp_path, [904], cases=1, size=(16, 16, 16), spacing=(7, 7, 7), progress=False)


# --- command line -------------------------------------------------------------------------------------------

def test_cli_writes_and_reports_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert phantoms_main(["-d", "903", "--cases", "1", "--size", "32", "40", "40", "--spacing", "8", "8", "8",
                          "--no-progress"]) == 0
    assert (tmp_path / "Dataset903_PhantomCTLiverTumour" / "dataset.json").exists()
    assert phantoms_main(["-d", "903", "--cases", "1", "--size", "32", "--spacing", "8", "8", "8"]) == 2
    assert "error: dataset id 903 already exists" in capsys.readouterr().err
    assert phantoms_main(["-d", "903", "--size", "32", "32", "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err
    assert phantoms_main(["-d", "999"]) == 2
    assert "unknown phantom dataset" in capsys.readouterr().err
    monkeypatch.delenv("nnUNet_raw")
    assert phantoms_main(["-d", "901"]) == 2
    assert "nnUNet_raw" in capsys.readouterr().err
    assert phantoms_main(["--preview", str(tmp_path / "x.jpg")]) == 2
    assert ".png" in capsys.readouterr().err


def test_preview_png(tmp_path):
    out = write_preview(tmp_path / "p.png", seed=0, size=(32, 40, 40), spacing=(8, 8, 8))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


@pytest.mark.slow
def test_clinical_size_volume(request):
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("clinical-size rendering takes ~20-60 s and 2 GB; run with -m slow")
    subj = make_subject(0, 0, dataset=901, tumour_hosts=("liver",))
    grid = Grid((100, 512, 512), (2.5, 0.7, 0.7), subj.fov_center)
    img, smap = render_ct(subj, grid)
    assert img.shape == (100, 512, 512) and img.dtype == np.int16
    present = set(np.unique(smap).tolist())
    assert {S.LIVER, S.SPLEEN, S.KIDNEY_R, S.KIDNEY_L, S.AORTA, S.LIVER_TUMOUR} <= present
