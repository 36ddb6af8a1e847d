"""Readers keep the pixel size and give medical volumes the CT model's orientation.

The files are written here (nibabel, pydicom, tifffile) from the real CT scan, so a
wrong flip or axis order shows as arrays that differ from the training volume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unetpp import medical, readers

nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def ct_zyx(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Slices 90-97 of the whole scan (liver present) and their organ ids, ZYX as trained."""
    folder = data_dir / "ct_totalseg"
    return (
        tifffile.imread(folder / "ct_full.tif")[90:98],
        tifffile.imread(folder / "organs_full.tif")[90:98],
    )


def ras_from_zyx(zyx: np.ndarray) -> np.ndarray:
    """The training volume as a canonical (RAS) NIfTI array: axes x=R, y=A, z=S."""
    return np.ascontiguousarray(np.flip(zyx, 1).transpose(2, 1, 0))


# --------------------------------------------------------------------------- NIfTI


def test_reorient_matches_the_training_volume_anatomy(data_dir: Path) -> None:
    """The convention in the docstring is what the training volume shows: liver at large X
    (patient's right), stomach anterior of the kidneys (smaller Y), lungs at large Z."""
    organs = tifffile.imread(data_dir / "ct_totalseg" / "organs_full.tif")
    centre = {k: np.argwhere(organs == k).mean(0) for k in (1, 3, 5, 6)}
    print({k: np.round(v, 1).tolist() for k, v in centre.items()})
    assert centre[5][2] > centre[1][2] + 30  # liver (right) vs spleen (left), along X
    assert centre[6][1] < centre[3][1] - 15  # stomach in front of the left kidney, along Y


@pytest.mark.parametrize("storage", ["RAS", "LPS", "SLP-permuted"])
def test_nifti_any_storage_reads_as_training_volume(
    ct_zyx: tuple[np.ndarray, np.ndarray], tmp_path: Path, storage: str
) -> None:
    ct, _ = ct_zyx
    spacing = np.array([0.8, 0.7, 3.0])  # x, y, z in mm: anisotropic
    ras = ras_from_zyx(ct)
    if storage == "RAS":
        data, affine = ras, np.diag([*spacing, 1.0])
    elif storage == "LPS":  # x and y stored reversed, as many scanners write
        data = ras[::-1, ::-1, :]
        affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    else:  # voxel axes (S, P, L): permuted and two of them reversed
        data = ras[::-1, ::-1, :].transpose(2, 1, 0)
        affine = np.zeros((4, 4))
        affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = (
            spacing[2],
            -spacing[1],
            -spacing[0],
            1.0,
        )
    affine[:3, 3] = (12.5, -40.0, 100.0)
    path = tmp_path / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(data), affine), str(path))
    got = readers.read_image(path)
    assert got.axes == "ZYX" and got.unit == "mm" and got.source == "nifti"
    np.testing.assert_allclose(got.scale, (3.0, 0.7, 0.8))
    assert got.pixel_size == pytest.approx((3.0, 0.7, 0.8))
    assert got.array.dtype == ct.dtype
    np.testing.assert_array_equal(got.array, ct)
    canonical = nibabel.as_closest_canonical(nibabel.load(str(path)))  # nibabel agrees
    np.testing.assert_array_equal(ras_from_zyx(got.array), np.asanyarray(canonical.dataobj))
    # labels drawn on the reader's volume go back onto the file's own grid
    ids = (got.array > 0).astype(np.uint8) + (got.array > 200)
    back = nibabel.load(str(medical.write_nifti_like(tmp_path / "labels.nii.gz", ids, path)))
    np.testing.assert_array_equal(back.affine, nibabel.load(str(path)).affine)
    np.testing.assert_array_equal(
        np.asanyarray(back.dataobj), (data > 0).astype(np.uint8) + (data > 200)
    )
    assert back.get_data_dtype() == np.uint8


def test_nifti_marker_voxel_and_micron_units(tmp_path: Path) -> None:
    data = np.zeros((5, 6, 7), np.uint8)  # voxel axes i, j, k
    data[1, 2, 3] = 9
    affine = np.array([[0, 0, -2.0, 0], [0, 0.5, 0, 0], [0.25, 0, 0, 0], [0, 0, 0, 1]])
    image = nibabel.Nifti1Image(data, affine)
    image.header.set_xyzt_units("micron")
    nibabel.save(image, str(tmp_path / "m.nii"))
    got = readers.read_image(tmp_path / "m.nii")
    # i -> +S (Z), j -> +A (Y is flipped), k -> -R (X is flipped)
    assert got.array.shape == (5, 6, 7) and got.unit == "um"
    assert tuple(np.argwhere(got.array == 9)[0]) == (1, 6 - 1 - 2, 7 - 1 - 3)
    np.testing.assert_allclose(got.scale, (0.25, 0.5, 2.0))


def test_nifti_scaled_values_are_hounsfield(tmp_path: Path) -> None:
    stored = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    image = nibabel.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(2.0, -1024.0)
    nibabel.save(image, str(tmp_path / "s.nii.gz"))
    got = readers.read_image(tmp_path / "s.nii.gz")
    assert got.array.dtype == np.int16
    assert got.array.min() == -1024 and got.array.max() == 23 * 2 - 1024


# --------------------------------------------------------------------------- DICOM


def write_dicom_series(
    folder: Path,
    zyx: np.ndarray,
    pixel_spacing: tuple[float, float],
    slice_step: float,
    intercept: float = -2048.0,
) -> None:
    """A CT series in the usual LPS layout: columns run to the patient's left, rows to the
    back, slices upwards; stored unsigned with RescaleIntercept, files in shuffled order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian, generate_uid

    folder.mkdir()
    series, study = generate_uid(), generate_uid()
    order = np.random.default_rng(0).permutation(len(zyx))
    for n, z in enumerate(order):
        plane = np.flip(zyx[z], 1)  # training X runs to the patient's right, DICOM to the left
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series, study
        ds.InstanceNumber = int(n + 1)  # deliberately not the slice order
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-60.0, -50.0, float(200 + slice_step * z)]
        ds.PixelSpacing = list(pixel_spacing)
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = (plane.astype(np.int32) - int(intercept)).astype(np.uint16).tobytes()
        ds.save_as(str(folder / f"IM{n:04d}"), enforce_file_format=True)  # no suffix


def test_dicom_series_sorted_oriented_in_hu(
    ct_zyx: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    ct, _ = ct_zyx
    folder = tmp_path / "series"
    write_dicom_series(folder, ct, pixel_spacing=(0.75, 0.6), slice_step=2.5)
    (folder / "notes.txt").write_text("not dicom")
    assert medical.is_dicom(folder) and medical.is_medical(folder)
    got = readers.read_image(folder)
    assert got.axes == "ZYX" and got.unit == "mm" and got.source == "dicom"
    np.testing.assert_allclose(got.scale, (2.5, 0.75, 0.6))  # rows 0.75, columns 0.6
    assert got.array.dtype == np.int16 and got.array.min() < -500  # air in HU
    np.testing.assert_array_equal(got.array, ct)
    one = readers.read_image(sorted(folder.glob("IM*"))[0])  # a single file: one 2D slice
    assert one.axes == "YX" and one.array.ndim == 2
    assert any(np.array_equal(one.array, plane) for plane in ct)


def test_dicom_slices_without_positions_keep_their_thickness(tmp_path: Path) -> None:
    """Slices with no ImagePositionPatient are ordered by InstanceNumber; the gap between
    two instance numbers (1) was taken as the slice spacing: "1 mm" for 3 mm slices."""
    zyx = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    write_dicom_series(tmp_path / "s", zyx, (0.98, 0.98), 3.0)
    for file in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(str(file))
        del ds.ImagePositionPatient
        ds.SliceThickness = 3.0
        ds.save_as(str(file), enforce_file_format=True)
    got = readers.read_image(tmp_path / "s")
    assert got.array.shape[0] == 3
    np.testing.assert_allclose(got.scale, (3.0, 0.98, 0.98))


def test_dicom_with_fractional_slope(tmp_path: Path) -> None:
    zyx = np.arange(2 * 4 * 5, dtype=np.int16).reshape(2, 4, 5)
    write_dicom_series(tmp_path / "s", zyx, (1.0, 1.0), 1.0, intercept=-10.0)
    for file in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(str(file))
        ds.RescaleSlope = 0.5
        ds.save_as(str(file), enforce_file_format=True)
    got = readers.read_image(tmp_path / "s")
    assert got.array.dtype == np.float32
    np.testing.assert_allclose(got.array, (zyx + 10) * 0.5 - 10)


def test_a_broken_slice_in_a_dicom_series_is_named(tmp_path: Path) -> None:
    """One truncated file among the slices (its header still reads): the error names that
    file, not only the folder, and a slice of another size is named too."""
    zyx = np.arange(3 * 8 * 6, dtype=np.int16).reshape(3, 8, 6)
    write_dicom_series(tmp_path / "s", zyx, (1.0, 1.0), 1.0)
    victim = sorted((tmp_path / "s").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:-40])  # pixel data cut short
    with pytest.raises(ValueError, match=rf"{victim.name}: cannot read this slice's pixels"):
        readers.read_image(tmp_path / "s")
    write_dicom_series(tmp_path / "t", zyx, (1.0, 1.0), 1.0)
    odd = sorted((tmp_path / "t").iterdir())[2]
    ds = pydicom.dcmread(str(odd))
    ds.Rows, ds.Columns = 6, 8
    ds.save_as(str(odd), enforce_file_format=True)
    with pytest.raises(ValueError, match=r"a slice of shape \(6, 8\) in a series of \(8, 6\)"):
        readers.read_image(tmp_path / "t")


def test_a_dicom_folder_of_two_series_or_with_missing_slices_is_read_with_a_warning(
    tmp_path: Path,
) -> None:
    """A scout series beside the scan, or two slices lost in a copy: read silently before
    (the user saw neither), now each says what was read."""
    zyx = np.arange(6 * 8 * 6, dtype=np.int16).reshape(6, 8, 6)
    write_dicom_series(tmp_path / "two", zyx, (1.0, 1.0), 2.0)
    write_dicom_series(tmp_path / "scout", zyx[:2], (1.0, 1.0), 5.0)
    for file in (tmp_path / "scout").iterdir():
        file.rename(tmp_path / "two" / f"scout_{file.name}")
    with pytest.warns(UserWarning, match="holds 2 DICOM series; read the one with the most slices"):
        got = readers.read_image(tmp_path / "two")
    np.testing.assert_array_equal(got.array, zyx)
    write_dicom_series(tmp_path / "gap", zyx, (1.0, 1.0), 2.0)
    for file in (tmp_path / "gap").iterdir():
        if float(pydicom.dcmread(str(file)).ImagePositionPatient[2]) in (204.0, 206.0):
            file.unlink()
    with pytest.warns(UserWarning, match="unevenly spaced"):
        assert readers.read_image(tmp_path / "gap").array.shape == (4, 8, 6)
    with pytest.raises(ValueError, match="unevenly spaced"):  # no NIfTI misplacing slices
        medical.write_nifti_like(tmp_path / "gap.nii.gz", np.ones((4, 8, 6)), tmp_path / "gap")
    # one slice of another pixel spacing (a re-exported slice): read silently at the first's
    write_dicom_series(tmp_path / "mixed", zyx, (1.0, 1.0), 2.0)
    odd = next(iter(sorted((tmp_path / "mixed").iterdir())))
    ds = pydicom.dcmread(str(odd))
    ds.PixelSpacing = [0.5, 0.5]
    ds.save_as(str(odd))
    with pytest.warns(UserWarning, match="2 different pixel spacings"):
        assert readers.read_image(tmp_path / "mixed").array.shape == (6, 8, 6)


def test_a_localizer_inside_the_scans_own_series_is_left_out_with_a_warning(
    tmp_path: Path,
) -> None:
    """A coronal scout of another size saved in the scan's own SeriesInstanceUID: the folder
    was refused ("a slice of shape (5, 7) in a series of (8, 6); put one series per folder",
    though it held one series) after a warning of uneven slices it did not have."""
    import warnings

    zyx = np.arange(6 * 8 * 6, dtype=np.int16).reshape(6, 8, 6)
    write_dicom_series(tmp_path / "scan", zyx, (1.0, 1.0), 2.0)
    first = sorted((tmp_path / "scan").iterdir())[0]
    scout = pydicom.dcmread(str(first))
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    scout.ImagePositionPatient = [-60.0, 0.0, 260.0]
    scout.Rows, scout.Columns = 5, 7
    scout.PixelData = np.zeros((5, 7), np.uint16).tobytes()
    scout.save_as(str(tmp_path / "scan" / "scout.dcm"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = readers.read_image(tmp_path / "scan")
    said = [str(w.message) for w in caught]
    assert any("left out 1 localizer / scout slice(s)" in m for m in said), said
    assert not any("unevenly spaced" in m for m in said), said
    np.testing.assert_array_equal(got.array, zyx)
    assert got.scale == (2.0, 1.0, 1.0)
    labels = np.ones_like(zyx, dtype=np.uint8)  # and its labels still go out on the scan
    medical.write_nifti_like(tmp_path / "labels.nii.gz", labels, tmp_path / "scan")


def test_one_file_of_a_dicom_series_says_the_folder_holds_the_series(tmp_path: Path) -> None:
    """File > Open on one slice of an 11-slice series opened one 379 x 458 slice and said
    nothing: a radiologist used to viewers that load the series took it for the scan."""
    zyx = np.arange(4 * 8 * 6, dtype=np.int16).reshape(4, 8, 6)
    write_dicom_series(tmp_path / "scan", zyx, (1.0, 1.0), 2.0)
    one = sorted((tmp_path / "scan").iterdir())[0]
    with pytest.warns(UserWarning, match=r"one of the 4 DICOM files in its folder; .*open the"):
        assert readers.read_image(one).array.shape == (8, 6)
    (tmp_path / "alone").mkdir()
    one.rename(tmp_path / "alone" / one.name)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a lone slice: nothing to say
        readers.read_image(tmp_path / "alone" / one.name)


def test_labels_of_a_dicom_series_go_out_as_nifti_on_the_scan(
    ct_zyx: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """A DICOM user got labels only as TIFF, which ITK-SNAP or Slicer cannot lay on the scan.
    The NIfTI holds the reader's labels (read back identically) at the scan's world positions."""
    ct, organs = ct_zyx
    write_dicom_series(tmp_path / "series", ct, (0.75, 0.6), 2.5)
    labels = organs.astype(np.int32)
    labels[0, 0, 0] = 99  # reader voxel (0, 0, 0): lowest slice, front row, patient's right
    out = medical.write_nifti_like(tmp_path / "labels.nii.gz", labels, tmp_path / "series")
    np.testing.assert_array_equal(readers.read_image(out).array, labels)
    image = nibabel.load(str(out))
    voxel = np.argwhere(np.asarray(image.dataobj) == 99)[0]
    world = image.affine @ [*voxel, 1.0]
    columns = ct.shape[2]  # DICOM column c lies at LPS x = -60 + 0.6 c; RAS x = 60 - 0.6 c
    np.testing.assert_allclose(world[:3], [60 - 0.6 * (columns - 1), 50.0, 200.0], atol=1e-4)
    assert image.header.get_xyzt_units()[0] == "mm"


def test_nifti_ct_is_segmented_like_the_tif(
    ct_zyx: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """The acceptance path: a .nii.gz stored LPS-style gives the shipped CT model the same
    input as the training tif, so the liver is found (Dice printed)."""
    from napari_unetpp import zoo
    from napari_unetpp.config import PredictConfig
    from napari_unetpp.inference import predict_array

    ct, organs = ct_zyx
    ras = ras_from_zyx(ct)
    nibabel.save(
        nibabel.Nifti1Image(np.ascontiguousarray(ras[::-1, ::-1]), np.diag([-3.0, -3.0, 3.0, 1.0])),
        str(tmp_path / "ct.nii.gz"),
    )
    got = readers.read_image(tmp_path / "ct.nii.gz")
    model, info = zoo.load_pretrained("ct")
    config = PredictConfig(device="cpu", mixed_precision=False, tile_size=(128, 128))
    probs = predict_array(model, got.array[2:6], config, info.data)
    classes = probs[max(probs)].argmax(0)
    liver = [k for k, (name, _) in enumerate(zoo.CT_ORGANS, start=1) if name == "liver"][0]
    truth = organs[2:6] == 5
    dice = 2 * ((classes == liver) & truth).sum() / ((classes == liver).sum() + truth.sum())
    print(f"liver Dice on the NIfTI read-back: {dice:.3f}")
    assert dice > 0.85


# --------------------------------------------------------------------------- TIFF


def test_a_corrupt_tiff_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A .tif whose first page points nowhere raised IndexError ("list index out of range"):
    a traceback from the CLI, a crash message from the napari reader."""
    from napari_unetpp import cli

    bad = tmp_path / "scan.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="not a readable TIFF"):
        readers.read_tiff(bad)
    assert cli.main(["predict", "zoo:em", str(bad), "--out", str(tmp_path / "out"), "-q"]) == 2
    assert "not a readable TIFF" in capsys.readouterr().err


def test_tiff_resolution_centimetre(tmp_path: Path) -> None:
    path = tmp_path / "r.tif"
    tifffile.imwrite(
        path, np.zeros((8, 9), np.uint8), resolution=(2000.0, 4000.0), resolutionunit=3
    )  # pixels per cm: 5 um by 2.5 um
    got = readers.read_image(path)
    assert got.unit == "um" and got.axes == "YX"  # readable: 2.5 um, not 0.0025 mm
    np.testing.assert_allclose(got.scale, (2.5, 5.0))


def test_tiff_centimetre_resolution_of_em_reads_in_nm(tmp_path: Path) -> None:
    """A 4 nm EM slice stored in pixels per cm opens as 4 nm (it read as 4e-06 mm)."""
    path = tmp_path / "em.tif"
    tifffile.imwrite(path, np.zeros((8, 9), np.uint8), resolution=(2.5e6, 2.5e6), resolutionunit=3)
    got = readers.read_image(path)
    assert got.unit == "nm"
    np.testing.assert_allclose(got.scale, (4.0, 4.0))


@pytest.mark.parametrize(("unit", "expected"), [("MICROMETER", "um"), ("MILLIMETER", "mm")])
def test_tifffile_metric_resolution_units(tmp_path: Path, unit: str, expected: str) -> None:
    """tifffile writes millimetre and micrometre resolution units (beyond TIFF's inch/cm)."""
    path = tmp_path / "res.tif"
    tifffile.imwrite(
        path,
        np.zeros((6, 7), np.uint8),
        resolution=(1 / 0.25, 1 / 0.5),
        resolutionunit=getattr(tifffile.RESUNIT, unit),
    )
    got = readers.read_image(path)
    assert got.unit == expected and got.pixel_size == pytest.approx((0.5, 0.25))


def test_tiff_inch_resolution_is_not_a_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, np.zeros((8, 9), np.uint8), resolution=(72.0, 72.0), resolutionunit=2)
    got = readers.read_image(path)
    assert got.pixel_size is None and got.scale == (1.0, 1.0)


def test_a_results_class_axis_is_not_read_as_a_second_z(tmp_path: Path) -> None:
    """`predict --probabilities` on a CT volume writes (classes, Z, Y, X) with the volume's
    spacing; read back, the class axis must not become another 3 mm Z (axes were ``ZZYX``)."""
    from napari_unetpp.files import write_array

    probs = np.zeros((6, 4, 10, 12), np.float32)
    path = write_array(tmp_path / "ct_L4", probs, "tif", (3.0, 0.98, 0.98), "mm")
    got = readers.read_image(path)
    assert got.axes == "TZYX"
    assert got.pixel_size == pytest.approx((3.0, 0.98, 0.98)) and got.unit == "mm"
    assert readers.array_axes("QYX", 3) == "ZYX" and readers.array_axes("IYX", 3) == "ZYX"


def test_results_carry_the_pixel_size_in_the_tiffs_own_resolution_tags(tmp_path: Path) -> None:
    """Fiji and other TIFF readers see a result's in-plane pixel size (X/YResolution per
    cm), not only this plugin, which reads the JSON description first."""
    from napari_unetpp.files import write_array

    path = write_array(tmp_path / "em_labels", np.zeros((8, 9), np.int32), "tif", (4.0, 5.0), "nm")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        x, y = (page.tags[f"{a}Resolution"].value for a in "XY")
        assert int(page.tags["ResolutionUnit"].value) == 3  # centimetre
        assert x[0] / x[1] == pytest.approx(1 / 5e-7) and y[0] / y[1] == pytest.approx(1 / 4e-7)
    got = readers.read_image(path)
    assert got.pixel_size == pytest.approx((4.0, 5.0)) and got.unit == "nm"
    unknown = write_array(tmp_path / "unknown", np.zeros((8, 9), np.int32), "tif")
    with tifffile.TiffFile(unknown) as tif:  # no pixel size: no physical resolution claimed
        unit = tif.pages[0].tags.get("ResolutionUnit")
        assert unit is None or int(unit.value) != 3


def test_zarr_probabilities_carry_the_inputs_pixel_size(tmp_path: Path) -> None:
    """``predict --format zarr --probabilities``: the labels zarr and the TIFF ``_L{d}`` files
    carried the input's 5 x 4 x 4 nm, the probabilities' zarr nothing (its heads opened on
    a 1-unit grid beside the labels)."""
    from napari_unetpp.cli import main
    from napari_unetpp.stores import open_zarr

    image = tmp_path / "stack.tif"
    stack = np.random.default_rng(0).integers(0, 255, (2, 64, 64), dtype=np.uint8)
    tifffile.imwrite(image, stack, imagej=True, resolution=(0.25, 0.25),
                     metadata={"unit": "nm", "spacing": 5.0, "axes": "ZYX"})  # fmt: skip
    argv = [str(image), "--out", str(tmp_path / "out"), "--format", "zarr", "--probabilities"]
    assert main(["predict", "zoo:em", *argv, "--depths", "1", "--no-check", "-q"]) == 0
    group = open_zarr(tmp_path / "out" / "stack_probabilities.zarr")
    for node in (group, group["L1"]):
        assert readers.zarr_spacing(node, 3) == ((5.0, 4.0, 4.0), "nm")
    labels = open_zarr(tmp_path / "out" / "stack_labels.zarr")
    assert readers.zarr_spacing(labels, 3) == ((5.0, 4.0, 4.0), "nm")


def test_imagej_tiff_spacing_and_unit(tmp_path: Path) -> None:
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        np.zeros((4, 8, 9), np.uint16),
        imagej=True,
        resolution=(1 / 0.13, 1 / 0.13),
        metadata={"spacing": 0.5, "unit": "micron", "axes": "ZYX"},
    )
    got = readers.read_image(path)
    assert got.axes == "ZYX" and got.unit == "um"
    np.testing.assert_allclose(got.scale, (0.5, 0.13, 0.13), rtol=1e-5)


def test_imagej_stack_calibrated_in_plane_only(tmp_path: Path) -> None:
    """ImageJ's default for a stack of slices: X/Y resolution and a unit, no Z spacing. The
    in-plane size is known (a 2D model needs no more) and the CLI reads it like napari."""
    from napari_unetpp import files

    path = tmp_path / "slices.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 8, 9), np.uint8),
        imagej=True,
        resolution=(1 / 0.002, 1 / 0.002),
        metadata={"unit": "micron", "axes": "ZYX"},
    )
    got = readers.read_image(path)
    assert got.pixel_size == pytest.approx((0.002, 0.002)) and got.unit == "um"
    _, size, unit = files.read_image_with_size(path)
    assert size == pytest.approx((0.002, 0.002)) and unit == "um"


def test_ome_tiff_physical_sizes_in_mixed_units(tmp_path: Path) -> None:
    path = tmp_path / "o.ome.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 2, 8, 9), np.uint16),
        ome=True,
        metadata={
            "axes": "ZCYX",
            "PhysicalSizeX": 65.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 0.065,
            "PhysicalSizeYUnit": "µm",
            "PhysicalSizeZ": 0.3,
            "PhysicalSizeZUnit": "µm",
        },
    )
    got = readers.read_image(path)
    assert got.source == "ome-tiff" and got.axes == "ZCYX" and got.unit == "nm"
    np.testing.assert_allclose(got.scale, (300.0, 1.0, 65.0, 65.0))
    assert got.pixel_size == pytest.approx((300.0, 65.0, 65.0))


def test_training_volume_keeps_its_3mm(data_dir: Path) -> None:
    got = readers.read_image(data_dir / "ct_totalseg" / "ct_full.tif")
    assert got.array.shape == (112, 101, 122) and got.scale == (3.0, 3.0, 3.0)


def test_missing_optional_package_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    nibabel.save(
        nibabel.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), str(tmp_path / "a.nii")
    )
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(ImportError, match=r"napari-unetpp\[medical\]"):
        readers.read_image(tmp_path / "a.nii")


# --------------------------------------------------------------------------- CLI path


def test_files_reads_medical_with_size(
    ct_zyx: tuple[np.ndarray, np.ndarray], tmp_path: Path, data_dir: Path
) -> None:
    from napari_unetpp import files

    ct, _ = ct_zyx
    write_dicom_series(tmp_path / "series", ct, (0.75, 0.6), 2.5)
    nibabel.save(
        nibabel.Nifti1Image(ras_from_zyx(ct), np.diag([0.8, 0.7, 3.0, 1.0])),
        str(tmp_path / "scan.nii.gz"),
    )
    found = files.collect_files([tmp_path], "image")
    assert found == [tmp_path / "scan.nii.gz", tmp_path / "series"]  # a series is one image
    assert [files.stem(p) for p in found] == ["scan", "series"]
    array, size, unit = files.read_image_with_size(found[0])
    np.testing.assert_array_equal(array, ct)
    assert size == pytest.approx((3.0, 0.7, 0.8)) and unit == "mm"
    np.testing.assert_array_equal(files.read_array(found[1]), ct)
    array, size, unit = files.read_image_with_size(data_dir / "ct_totalseg" / "ct.tif", lazy=True)
    assert array.shape == (30, 101, 122) and size == (3.0, 3.0, 3.0) and unit is None
    array, size, unit = files.read_image_with_size(data_dir / "em_isbi2012" / "image.tif")
    assert size is None and unit is None
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(files.UserError, match="broken.nii.gz"):
        files.read_array(tmp_path / "broken.nii.gz")


def test_predict_gives_dicom_and_4d_nifti_users_nifti_labels(
    ct_zyx: tuple[np.ndarray, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``predict`` wrote a DICOM series' labels only as TIFF, and a 4D or a 2D NIfTI's not as
    NIfTI ("labels not written as NIfTI"): all now get ``<name>_labels.nii.gz`` on their grid."""
    from napari_unetpp.cli import main

    ct, _ = ct_zyx
    write_dicom_series(tmp_path / "series", ct[:3], (3.0, 3.0), 3.0)
    series4d = np.stack([ras_from_zyx(ct[:3])] * 2, axis=-1)
    nibabel.save(nibabel.Nifti1Image(series4d, np.diag([3.0, 3.0, 3.0, 1.0])), tmp_path / "t.nii")
    slice2d = nibabel.Nifti1Image(ras_from_zyx(ct[:1])[..., 0], np.diag([3.0, 3.0, 3.0, 1.0]))
    nibabel.save(slice2d, tmp_path / "slice.nii.gz")
    argv = ["predict", "zoo:ct", *(str(tmp_path / n) for n in ("series", "t.nii", "slice.nii.gz"))]
    code = main([*argv, "--out", str(tmp_path / "out"), "--depth", "1", "--no-check", "-q"])
    err = capsys.readouterr().err
    assert code == 0 and "not written as NIfTI" not in err, err
    for name, shape in (
        ("series", (3, 101, 122)),
        ("t", (2, 3, 101, 122)),
        ("slice", (1, 101, 122)),
    ):
        tif = tifffile.imread(tmp_path / "out" / f"{name}_labels.tif")
        assert tif.shape == shape and tif.max() > 0
        back = readers.read_image(tmp_path / "out" / f"{name}_labels.nii.gz")
        np.testing.assert_array_equal(back.array, tif)
        np.testing.assert_allclose(back.scale[-3:], (3.0, 3.0, 3.0))


def _ome_zarr(path: Path, data: np.ndarray, scale: list[float], unit: str) -> Path:
    """An OME-Zarr (NGFF 0.4) image: axes t, c, z, y, x with a unit, level 0 only."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", shape=data.shape, dtype=data.dtype)[...] = data
    space = [{"name": a, "type": "space", "unit": unit} for a in "zyx"]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, *space],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
            ],
        }
    ]
    return path


def test_ome_zarr_pixel_size_is_read_and_kept(
    tmp_path: Path, em_stack: tuple[np.ndarray, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    """An OME-Zarr's physical size was ignored: the EM model ran an 8 nm image as if at its
    4 nm ("the file gives no pixel size"), and the labels carried no size."""
    import zarr

    from napari_unetpp import files
    from napari_unetpp.cli import main

    image = em_stack[0][:2, :64, :64][None, None]  # (1, 1, 2, 64, 64)
    path = _ome_zarr(tmp_path / "em.zarr", image, [1.0, 1.0, 50.0, 8.0, 8.0], "nanometer")
    array, size, unit = files.read_image_with_size(path, lazy=True)
    assert array.shape == image.shape and size == (50.0, 8.0, 8.0) and unit == "nm"
    argv = ["predict", "zoo:em", str(path), "--out", str(tmp_path / "out"), "--depth", "1"]
    assert main([*argv, "--no-check", "-q"]) == 0
    assert "pixel size 50 x 8 x 8 nm from the file" in capsys.readouterr().err
    labels = zarr.open(str(tmp_path / "out" / "em_labels.zarr"), mode="r")
    assert labels.shape == image.shape
    assert files.read_image_with_size(tmp_path / "out" / "em_labels.zarr")[1:] == (
        (50.0, 8.0, 8.0),
        "nm",
    )
    bad = _ome_zarr(tmp_path / "bad.zarr", image, [1.0, 1.0, "x", 8.0], "nanometer")
    assert files.read_image_with_size(bad)[1:] == (None, None)  # read, without a size


# --------------------------------------------------------------------------- napari reader


def test_napari_reader_gives_scale_units_and_metadata(
    ct_zyx: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    from napari_unetpp._reader import get_image_reader, get_reader

    ct, _ = ct_zyx
    path = tmp_path / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(ras_from_zyx(ct), np.diag([0.8, 0.7, 3.0, 1.0])), str(path))
    assert get_reader(str(path)) is None  # the model reader leaves images alone
    (layer,) = get_image_reader(str(path))(str(path))  # a scan in HU: a windowed layer
    assert layer.name == "scan"
    np.testing.assert_array_equal(layer.data, ct)
    assert tuple(layer.scale) == pytest.approx((3.0, 0.7, 0.8))
    assert layer.metadata["unit"] == "mm"
    assert layer.metadata["pixel_size"] == pytest.approx((3.0, 0.7, 0.8))
    assert layer.contrast_limits == [-160.0, 240.0]
    assert layer.contrast_limits_range == [ct.min(), ct.max()]
    tifffile.imwrite(tmp_path / "scan.tif", ct)  # not known to be in HU: a tuple, as before
    ((data, kwargs, kind),) = get_image_reader(str(tmp_path / "scan.tif"))(
        str(tmp_path / "scan.tif")
    )
    assert kind == "image" and "contrast_limits" not in kwargs
    ome = tmp_path / "cells.ome.tif"
    tifffile.imwrite(
        ome,
        np.zeros((2, 8, 9), np.uint16),
        ome=True,
        metadata={"axes": "CYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2},
    )
    ((_, kwargs, _),) = get_image_reader(str(ome))(str(ome))
    assert kwargs["channel_axis"] == 0 and kwargs["scale"] == pytest.approx((0.2, 0.2))
    assert kwargs["metadata"]["unit"] == "um" and kwargs["name"] == "cells"
    assert get_image_reader(str(tmp_path / "notes.txt")) is None


@pytest.mark.gui
def test_napari_opens_dicom_folder_with_scale(
    make_napari_viewer, ct_zyx: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    ct, _ = ct_zyx
    write_dicom_series(tmp_path / "series", ct, (0.75, 0.6), 2.5)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "series"), plugin="napari-unetpp")
    np.testing.assert_allclose(layer.scale, (2.5, 0.75, 0.6))
    # a run's command.sh names the series (the CLI reads it), not a copy of its pixels
    from napari_unetpp._widgets._layers import layer_file

    series = str((tmp_path / "series").resolve())
    assert layer_file(layer, tmp_path / "run", "image") == (series, None)
    np.testing.assert_array_equal(layer.data, ct)
    assert layer.metadata["unit"] == "mm"
    assert [str(u) for u in layer.units] == ["millimeter"] * 3


@pytest.mark.gui
def test_a_ct_opens_windowed_and_its_contrast_slider_can_widen_to_bone_and_air(
    make_napari_viewer, ct_zyx: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """A NIfTI in HU opened with the soft-tissue window, and napari made that window the
    contrast slider's whole range: a user could not widen it to see bone or lung."""
    from superqt import QDoubleRangeSlider

    ct, _ = ct_zyx
    path = tmp_path / "scan.nii.gz"
    nibabel.save(
        nibabel.Nifti1Image(ras_from_zyx(ct[:3]), np.diag([0.8, 0.8, 3.0, 1.0])), str(path)
    )
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-unetpp")
    assert layer.contrast_limits == [-160.0, 240.0]
    assert layer.contrast_limits_range == [ct[:3].min(), ct[:3].max()]
    viewer.layers.selection.active = layer
    sliders = [
        s
        for s in viewer.window._qt_window.findChildren(QDoubleRangeSlider)
        if tuple(s.value()) == (-160.0, 240.0)
    ]
    assert sliders, "no contrast slider shows the window"
    # the slider reaches air and bone: the user can widen the window from it
    assert all(s.minimum() <= ct[:3].min() and s.maximum() >= ct[:3].max() for s in sliders)


@pytest.mark.gui
def test_a_channel_of_a_multichannel_tiff_is_recorded_as_its_own_pixels(
    make_napari_viewer, tmp_path: Path
) -> None:
    """A run's command.sh named the whole 2-channel file for the one channel segmented: the
    CLI then segmented both channels as a 2-slice stack (QA session 11)."""
    from napari_unetpp._widgets._layers import layer_file

    channels = np.stack(
        [np.full((8, 9), 7, np.uint16), np.arange(72, dtype=np.uint16).reshape(8, 9)]
    )
    two = tmp_path / "two.ome.tif"
    tifffile.imwrite(two, channels, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.2})
    one = tmp_path / "one.tif"
    tifffile.imwrite(one, channels[1])
    viewer = make_napari_viewer()
    first, second = viewer.open(str(two), plugin="napari-unetpp")
    path, copy = layer_file(second, tmp_path / "run", "image")
    assert copy is not None and Path(path) == copy.path != two.resolve()
    copy.write()  # what the run's job does first
    np.testing.assert_array_equal(tifffile.imread(path), channels[1])
    (whole,) = viewer.open(str(one), plugin="napari-unetpp")
    assert layer_file(whole, tmp_path / "run", "image") == (str(one.resolve()), None)  # itself


def test_cli_segments_a_1mm_nifti_at_the_models_3mm(
    ct_zyx: tuple[np.ndarray, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14's CT user: a scan at 1 mm in-plane, dropped as .nii.gz on the CLI with no flag.
    The file's spacing is used, the model runs at its 3 mm, the labels come back at 1 mm."""
    from napari_unetpp import scale as S
    from napari_unetpp.cli import main

    ct, organs = ct_zyx
    fine = S.resample(ct[2:5].astype(np.float32), (3, 3), (1, 2)).round().astype(np.int16)
    truth = S.resample_to(organs[2:5] == 5, fine.shape, (1, 2), order=0)
    nibabel.save(
        nibabel.Nifti1Image(ras_from_zyx(fine), np.diag([1.0, 1.0, 3.0, 1.0])),
        str(tmp_path / "scan.nii.gz"),
    )
    code = main(
        [
            "predict",
            "zoo:ct",
            str(tmp_path / "scan.nii.gz"),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "-q",
            "--tile",
            "128",
            "128",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "pixel size 3 x 1 x 1 mm from the file" in err
    labels = tifffile.imread(tmp_path / "o" / "scan_labels.tif")
    assert labels.shape == fine.shape  # back on the file's own 1 mm grid
    reread = readers.read_image(tmp_path / "o" / "scan_labels.tif")  # overlays the scan
    assert reread.scale == pytest.approx((3.0, 1.0, 1.0)) and reread.unit == "mm"
    as_nifti = nibabel.load(str(tmp_path / "o" / "scan_labels.nii.gz"))  # for medical viewers
    np.testing.assert_array_equal(as_nifti.affine, np.diag([1.0, 1.0, 3.0, 1.0]))
    np.testing.assert_array_equal(np.asanyarray(as_nifti.dataobj), ras_from_zyx(labels))
    liver = 1  # the CT model's first class
    dice = 2 * ((labels == liver) & truth).sum() / ((labels == liver).sum() + truth.sum())
    print(f"liver Dice, 1 mm NIfTI through the CLI: {dice:.3f}")
    assert dice > 0.8


def test_a_nifti_scan_gets_nifti_labels_with_zarr_output_too(
    ct_zyx: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """``predict scan.nii.gz --format zarr`` wrote only ``scan_labels.zarr``: the NIfTI labels
    the user guide promises for a NIfTI scan (what ITK-SNAP or Slicer lay over it) were left
    out without a word; they are now written, the same as with TIFF output."""
    from napari_unetpp.cli import main

    ct, _ = ct_zyx
    affine = np.diag([-3.0, 3.0, 3.0, 1.0])  # x stored flipped: the labels keep it
    nibabel.save(nibabel.Nifti1Image(ras_from_zyx(ct[2:4]), affine), str(tmp_path / "scan.nii"))
    flags = ["--device", "cpu", "-q", "--no-check", "--tile", "128", "128"]
    for fmt in ("zarr", "tif"):
        argv = ["predict", "zoo:ct", str(tmp_path / "scan.nii"), "--out", str(tmp_path / fmt)]
        assert main([*argv, "--format", fmt, *flags]) == 0
    as_nifti = nibabel.load(str(tmp_path / "zarr" / "scan_labels.nii.gz"))
    np.testing.assert_array_equal(as_nifti.affine, affine)
    from_tif = nibabel.load(str(tmp_path / "tif" / "scan_labels.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(as_nifti.dataobj), np.asanyarray(from_tif.dataobj))
    assert np.asanyarray(as_nifti.dataobj).any()


def test_a_compressed_dicom_series_without_a_decoder_is_one_clear_error(tmp_path: Path) -> None:
    """JPEG 2000 slices that no installed plugin decodes: pydicom's RuntimeError was a
    traceback; the error names the file, the compression and what to install."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    write_dicom_series(tmp_path / "s", np.zeros((2, 8, 6), np.int16), (1.0, 1.0), 1.0)
    for file in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(str(file))
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"0" * 64])
        ds["PixelData"].VR = "OB"
        ds.save_as(str(file), enforce_file_format=True)
    with pytest.raises(ValueError, match="JPEG 2000.*pip install pylibjpeg"):
        readers.read_image(tmp_path / "s")
