"""Segment everything: equality with the official generator, tiling, progress, options."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from napari_segany.sam.automatic import SamAutomaticMaskGenerator, segment_everything
from napari_segany.sam.mask_records import MaskCandidates, records_to_label_image
from napari_segany.sam.tiling import merge_across_tiles
from tests.fixtures_sam import build_official_tiny_sam, import_segment_anything
from tests.sam.official_adapters import OfficialSamAdapter

RECORD_KEYS = ("area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box")


def stable_batched_nms(boxes, scores, idxs, iou_threshold):
    """torchvision's batched_nms semantics (stable sort by score, strict IoU test), brute force."""
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    boxes = boxes.float()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = []
    for i in order:
        suppressed = False
        for k in kept:
            if idxs[i] != idxs[k]:
                continue
            top_left = torch.maximum(boxes[i, :2], boxes[k, :2])
            bottom_right = torch.minimum(boxes[i, 2:], boxes[k, 2:])
            inter = (bottom_right - top_left).clamp(min=0).prod()
            if inter / (area[i] + area[k] - inter) > iou_threshold:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return torch.as_tensor(kept, dtype=torch.long)


@pytest.fixture
def official(monkeypatch):
    """The official package, with torchvision's exact NMS and an OpenCV stand-in (skimage)."""
    segment_anything = import_segment_anything()
    import segment_anything.automatic_mask_generator as official_amg
    from skimage.measure import label

    def connected_components_with_stats(image, connectivity):
        regions = label(image.astype(bool), connectivity=2 if connectivity == 8 else 1)
        sizes = np.bincount(regions.ravel(), minlength=int(regions.max()) + 1)
        stats = np.zeros((len(sizes), 5), dtype=np.int32)
        stats[:, -1] = sizes
        return len(sizes), regions.astype(np.int32), stats, None

    monkeypatch.setattr(official_amg, "batched_nms", stable_batched_nms)
    monkeypatch.setitem(
        sys.modules,
        "cv2",
        types.SimpleNamespace(connectedComponentsWithStats=connected_components_with_stats),
    )
    return segment_anything


# -- a SAM whose decoder draws discs around the prompt (so that many different masks are kept) --------
class PointEchoPromptEncoder(nn.Module):
    """Passes the prompt point through as the "sparse embedding"."""

    def __init__(self, embedding_size: tuple[int, int]) -> None:
        super().__init__()
        self.image_embedding_size = embedding_size

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1, 1, *self.image_embedding_size)

    def forward(self, points, boxes, masks):
        coords, _ = points
        return coords.float(), torch.zeros(coords.shape[0], 1, *self.image_embedding_size)


class DiscMaskDecoder(nn.Module):
    """Three disc-shaped logit maps around each point, radius, sharpness and score varying
    with the point, plus a little image-dependent texture."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size

    def forward(
        self,
        image_embeddings,
        image_pe,
        sparse_prompt_embeddings,
        dense_prompt_embeddings,
        multimask_output,
    ):
        points = sparse_prompt_embeddings[:, 0, :]  # (B, 2) x, y in the model input frame
        low_res = 4 * image_embeddings.shape[-1]
        centres = (torch.arange(low_res, dtype=torch.float32) + 0.5) * (self.image_size / low_res)
        px, py = points[:, 0, None, None], points[:, 1, None, None]
        distance = ((centres[None, None, :] - px) ** 2 + (centres[None, :, None] - py) ** 2).sqrt()
        texture = torch.nn.functional.interpolate(image_embeddings.mean(1, keepdim=True), low_res)[
            :, 0
        ]
        texture = 0.3 * texture / (texture.abs().amax() + 1e-6)
        logits, scores = [], []
        for k, base in enumerate((4.0, 9.0, 20.0)):
            phase = 0.37 * points[:, 0] + 0.23 * points[:, 1] + k
            radius = base * (1 + 0.4 * torch.sin(phase))
            sharpness = 6.0 + 40.0 * (0.5 + 0.5 * torch.sin(1.7 * phase))
            logits.append(
                (radius[:, None, None] - distance) * sharpness[:, None, None] / 4 + texture
            )
            scores.append(0.6 + 0.39 * torch.sin(1.3 * points[:, 0] + 0.7 * points[:, 1] + 2 * k))
        return torch.stack(logits, 1), torch.stack(scores, 1)


@pytest.fixture(scope="module")
def disc_sam():
    import_segment_anything()
    model = build_official_tiny_sam()
    grid = model.image_encoder.img_size // 16
    model.prompt_encoder = PointEchoPromptEncoder((grid, grid))
    model.mask_decoder = DiscMaskDecoder(model.image_encoder.img_size)
    return model


def _image(shape=(96, 160), seed=0):
    rng = np.random.default_rng(seed)
    image = (rng.random((*shape, 3)) * 60).astype(np.uint8)
    image[20:60, 30:90] += 150
    return image


def assert_same_records(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a["segmentation"].dtype == bool
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        for key in RECORD_KEYS:
            np.testing.assert_equal(a[key], b[key], err_msg=key)  # NaN == NaN (empty masks)


@pytest.mark.parametrize(
    "options",
    [
        {},  # the reference defaults (32 points per side, 0.88, 0.95, NMS 0.7, no crops)
        {"points_per_side": 12, "crop_n_layers": 1, "points_per_batch": 50},
        {"points_per_side": 16, "min_mask_region_area": 40, "stability_score_thresh": 0.8},
        {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    ],
    ids=["defaults", "crop-layers", "small-regions", "no-filters"],
)
def test_same_masks_as_official_generator(official, disc_sam, options):
    image = _image()
    theirs = official.SamAutomaticMaskGenerator(disc_sam, **options).generate(image)
    ours = SamAutomaticMaskGenerator(OfficialSamAdapter(disc_sam), **options).generate(image)
    assert len(theirs) >= 10  # the comparison is not trivial
    assert len({tuple(r["bbox"]) for r in theirs}) >= 10
    assert_same_records(ours, theirs)


def test_uncompressed_rle_output_equals_official(official, disc_sam):
    image = _image((70, 90), seed=4)
    options = {"points_per_side": 8, "output_mode": "uncompressed_rle"}
    theirs = official.SamAutomaticMaskGenerator(disc_sam, **options).generate(image)
    ours = SamAutomaticMaskGenerator(OfficialSamAdapter(disc_sam), **options).generate(image)
    assert len(theirs) >= 3
    assert [r["segmentation"] for r in ours] == [r["segmentation"] for r in theirs]


def test_chunked_upscaling_and_official_predictor_input(official, disc_sam):
    image = _image((80, 80), seed=3)
    theirs = official.SamAutomaticMaskGenerator(disc_sam, points_per_side=10).generate(image)
    predictor = OfficialSamAdapter(official.SamPredictor(disc_sam))
    ours = SamAutomaticMaskGenerator(predictor, points_per_side=10, upscale_chunk_bytes=1).generate(
        image
    )
    assert len(theirs) >= 5
    assert_same_records(ours, theirs)


def test_same_masks_as_official_on_the_same_weights(official, official_tiny_sam, tiny_sam_model):
    """Real tiny random-weight SAM: ours (this package's model) vs the official model."""
    image = _image((128, 128), seed=1)  # the model's input size: no resize differences
    options = {
        "points_per_side": 16,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 0.95,
    }
    theirs = official.SamAutomaticMaskGenerator(official_tiny_sam, **options).generate(image)
    ours = SamAutomaticMaskGenerator(tiny_sam_model, **options).generate(image)
    assert len(theirs) >= 3
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        # Different kernels: scores agree to float precision, masks except a few boundary pixels.
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-4)
        assert a["stability_score"] == pytest.approx(b["stability_score"], abs=1e-2)
        assert (a["segmentation"] != b["segmentation"]).mean() < 1e-3
        assert a["point_coords"] == b["point_coords"]


@pytest.mark.parametrize(
    ("preprocessing", "shape"),
    [("sam", (128, 128)), ("sam", (300, 200)), ("sam", (90, 70)), ("medsam", (300, 200))],
)
def test_masks_are_made_only_for_the_candidates_nms_keeps(
    tiny_sam_model, tiny_sam_hf_folder, monkeypatch, preprocessing, shape
):
    """Candidates wait for non-maximum suppression as low-resolution logits (a few hundred KB
    each, whatever the image size), scored from their full-size logits inside the window where
    they can pass the lowest threshold; only the kept ones get a mask. The same masks, scores
    and boxes as making every mask at once, for an image the size of the model input, larger
    and smaller, and with MedSAM's square resize."""
    from napari_segany.sam import load_sam, point_decoding

    model = tiny_sam_model
    if preprocessing == "medsam":
        model = load_sam(tiny_sam_hf_folder, precision="fp32", preprocessing="medsam")

    cropped = []  # full-resolution masks made: cut from whole masks, or made for kept candidates
    crop_to_boxes = point_decoding.crop_to_boxes
    make_masks = point_decoding.PointPromptDecoder.make_masks

    def counting_crop(masks, boxes):
        cropped.append(len(masks))
        return crop_to_boxes(masks, boxes)

    def counting_make_masks(self, candidates, chunk_bytes):
        pending = candidates.low_res is not None
        made = make_masks(self, candidates, chunk_bytes)
        cropped.append(len(made.crops) if pending else 0)
        return made

    monkeypatch.setattr(point_decoding, "crop_to_boxes", counting_crop)
    monkeypatch.setattr(point_decoding.PointPromptDecoder, "make_masks", counting_make_masks)
    image = _image(shape, seed=1)
    options = {
        "points_per_side": 16,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 0.95,
    }
    deferred = SamAutomaticMaskGenerator(model, **options).generate(image)
    made_deferred = sum(cropped)

    cropped.clear()
    decode_points = point_decoding.PointPromptDecoder.decode_points

    def at_once(self, *args, **kwargs):
        return decode_points(self, *args, **{**kwargs, "defer_masks": False})

    monkeypatch.setattr(point_decoding.PointPromptDecoder, "decode_points", at_once)
    immediate = SamAutomaticMaskGenerator(model, **options).generate(image)
    made_immediate = sum(cropped)

    assert len(deferred) >= 3
    assert made_deferred == len(deferred)  # one mask per kept candidate
    assert made_immediate > 2 * made_deferred  # every candidate, before suppression
    assert len(immediate) == len(deferred)
    for a, b in zip(deferred, immediate, strict=True):
        assert np.array_equal(a["segmentation"], b["segmentation"])
        assert {k: a[k] for k in RECORD_KEYS} == {k: b[k] for k in RECORD_KEYS}


# -- segment_everything ---------------------------------------------------------------------------
def drain(generator):
    steps = []
    while True:
        try:
            steps.append(next(generator))
        except StopIteration as stop:
            return steps, stop.value


def test_segment_everything_reports_progress_and_labels(disc_sam):
    image = _image()
    steps, result = drain(
        segment_everything(OfficialSamAdapter(disc_sam), image, points_per_side=12)
    )
    assert steps[-1][0] == steps[-1][1] == 1 + 3  # one embedding + 144 points in 3 batches
    assert [d for d, _ in steps] == list(range(1, len(steps) + 1))
    assert result.labels.dtype == np.int32 and result.labels.shape == image.shape[:2]
    records = SamAutomaticMaskGenerator(OfficialSamAdapter(disc_sam), points_per_side=12).generate(
        image
    )
    np.testing.assert_array_equal(result.labels, records_to_label_image(records, image.shape[:2]))
    assert result.labels.max() == len(result.records) >= 5
    for record in result.records:
        assert "segmentation" not in record
        x, y, w, h = record["bbox"]
        inside = result.labels[y : y + h + 1, x : x + w + 1] == record["label"]
        assert inside.any() and (result.labels == record["label"]).sum() == inside.sum()


def test_segment_everything_rejects_stacks(disc_sam):
    with pytest.raises(ValueError, match="2D"):
        drain(
            segment_everything(
                OfficialSamAdapter(disc_sam), np.zeros((3, 40, 40, 3), dtype=np.uint8)
            )
        )


# -- a predictor that returns each connected bright object under the point -------------------------
class ComponentPredictor:
    """Fake predictor: the mask of a point is the connected bright region under it."""

    def __init__(self) -> None:
        self.model = types.SimpleNamespace(mask_threshold=0.0)
        self.device = torch.device("cpu")
        self.is_image_set = False
        self.set_image_calls = 0
        self.decoded_points = 0

    def set_image(self, image):
        from skimage.measure import label

        self.image = image
        self.regions = torch.as_tensor(label(image[..., 0] > 100, connectivity=1))
        self.original_size = self.input_size = image.shape[:2]
        self.is_image_set = True
        self.set_image_calls += 1

    def get_embedding_state(self):
        return self.image

    def set_embedding_state(self, state):
        self.set_image(state)

    def apply_coords(self, coords, original_size):
        return coords

    def predict_torch(self, point_coords, point_labels, multimask_output=True, return_logits=False):
        self.decoded_points += len(point_coords)
        height, width = self.original_size
        xy = point_coords[:, 0].long()
        ids = self.regions[xy[:, 1].clamp(0, height - 1), xy[:, 0].clamp(0, width - 1)]
        masks = (self.regions[None] == ids[:, None, None]) & (ids[:, None, None] > 0)
        logits = torch.where(masks, 5.0, -5.0)[:, None].repeat(1, 3, 1, 1)
        return logits, torch.full((len(xy), 3), 0.95), None


def _blob_image():
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    image[90:110, 10:290] = 200  # a long bar crossing every vertical tile border
    image[20:40, 20:40] = 200
    image[150:190, 200:230] = 200
    image[60:75, 95:115] = 200  # inside the overlap of two tiles
    return image


def test_tiles_merge_objects_cut_by_borders():
    image = _blob_image()
    predictor = ComponentPredictor()
    steps, tiled = drain(
        segment_everything(predictor, image, tile_size=100, tile_overlap=40, points_per_side=16)
    )
    assert predictor.set_image_calls == 3 * 5 == len(steps) / (1 + 4)  # one embedding per tile
    assert steps[-1][0] == steps[-1][1]
    _, whole = drain(
        segment_everything(ComponentPredictor(), image, tile_size=None, points_per_side=48)
    )
    assert whole.labels.max() == 4
    assert tiled.labels.max() == 4
    for y, x in [(100, 150), (30, 30), (170, 215), (67, 105)]:
        assert tiled.labels[y, x] > 0
        np.testing.assert_array_equal(
            tiled.labels == tiled.labels[y, x], whole.labels == whole.labels[y, x]
        )


def test_merge_across_tiles_joins_pieces_keeps_nested_objects():
    def candidates(masks, tile):
        x0, y0, x1, y1 = tile
        found = []
        for mask in masks:
            rows, cols = np.nonzero(mask[y0:y1, x0:x1])
            box = [cols.min() + x0, rows.min() + y0, cols.max() + x0, rows.max() + y0]
            found.append(
                (box, torch.from_numpy(mask[box[1] : box[3] + 1, box[0] : box[2] + 1].copy()))
            )
        return MaskCandidates(
            boxes=torch.as_tensor([b for b, _ in found]),
            crops=[c for _, c in found],
            predicted_iou=torch.full((len(found),), 0.9),
            stability_score=torch.full((len(found),), 0.95),
            points=torch.zeros(len(found), 2, dtype=torch.float64),
            crop_boxes=torch.as_tensor([tile] * len(found)),
        )

    yy, xx = np.mgrid[:64, :100]
    disc = (yy - 32) ** 2 + (xx - 50) ** 2 < 15**2  # crosses both tile borders
    core = (yy - 32) ** 2 + (xx - 50) ** 2 < 4**2  # a nested object inside the overlap
    tile_a, tile_b = [0, 0, 60, 64], [40, 0, 100, 64]

    def clipped(mask, tile):
        out = np.zeros_like(mask)
        out[tile[1] : tile[3], tile[0] : tile[2]] = mask[tile[1] : tile[3], tile[0] : tile[2]]
        return out

    parts = [
        (tile_a, candidates([clipped(disc, tile_a), core], tile_a)),
        (tile_b, candidates([clipped(disc, tile_b), core], tile_b)),
    ]
    merged = merge_across_tiles(parts, 0.5)
    assert len(merged) == 2
    masks = sorted((merged.full_mask(i, (64, 100)) for i in range(2)), key=lambda m: m.sum())
    np.testing.assert_array_equal(masks[0], core)
    np.testing.assert_array_equal(masks[1], disc)


# -- options --------------------------------------------------------------------------------------
def test_skip_covered_points_decodes_fewer_prompts_same_objects():
    image = _blob_image()
    full, skipping = ComponentPredictor(), ComponentPredictor()
    reference = SamAutomaticMaskGenerator(full, points_per_side=32, points_per_batch=16).generate(
        image
    )
    records = SamAutomaticMaskGenerator(
        skipping, points_per_side=32, points_per_batch=16, skip_covered_points=True
    ).generate(image)
    assert skipping.decoded_points < full.decoded_points == 32 * 32
    np.testing.assert_array_equal(
        records_to_label_image(records, image.shape[:2]) > 0,
        records_to_label_image(reference, image.shape[:2]) > 0,
    )
    assert len(records) == len(reference) == 4


def test_predictor_embedding_is_reused_and_restored():
    image = _blob_image()
    predictor = ComponentPredictor()
    predictor.set_image(image)
    SamAutomaticMaskGenerator(predictor, points_per_side=8, reuse_embedding=True).generate(image)
    assert predictor.set_image_calls == 1  # reused, not recomputed
    options = {"points_per_side": 4, "crop_n_layers": 1, "reuse_embedding": True}
    SamAutomaticMaskGenerator(predictor, **options).generate(image)
    assert predictor.set_image_calls == 1 + 4 + 1  # 4 crops, then the whole image put back
    assert predictor.image is image
    # By default the embedding is computed: a same-size slice of a stack gets its own.
    other = image[::-1].copy()
    records = SamAutomaticMaskGenerator(predictor, points_per_side=8).generate(other)
    assert predictor.set_image_calls == 6 + 2 and predictor.image is image  # computed, restored
    flipped = {(x, 200 - y - h - 1, w, h) for x, y, w, h in (r["bbox"] for r in records)}
    reused = SamAutomaticMaskGenerator(predictor, points_per_side=8, reuse_embedding=True).generate(
        image
    )
    assert flipped == {tuple(r["bbox"]) for r in reused}


def test_invalid_options(disc_sam):
    with pytest.raises(ValueError, match="exactly one"):
        SamAutomaticMaskGenerator(OfficialSamAdapter(disc_sam), points_per_side=None)
    with pytest.raises(ValueError, match="tile_size"):
        SamAutomaticMaskGenerator(OfficialSamAdapter(disc_sam), tile_size=100, tile_overlap=100)


def test_tiled_run_with_this_packages_tiny_model(tiny_sam_model):
    from napari_segany.sam import SamPredictor

    predictor = SamPredictor(tiny_sam_model)
    image = np.random.default_rng(0).integers(0, 4000, (150, 260), dtype=np.uint16)
    predictor.set_image(image[:128, :128])
    before = predictor.get_image_embedding().clone()
    options = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    steps, result = drain(
        segment_everything(predictor, image, tile_size=128, tile_overlap=32, **options)
    )
    assert steps[-1] == (2 * 3 * 2, 2 * 3 * 2)  # 6 tiles: one embedding + one batch each
    assert result.labels.shape == image.shape and result.labels.dtype == np.int32
    assert result.labels.max() == len(result.records) >= 1
    assert torch.equal(predictor.get_image_embedding(), before)  # the user's embedding is back


def test_automatic_module_pulls_no_gui():
    import subprocess

    code = "import sys, napari_segany.sam.automatic; print(' '.join(sys.modules))"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert not {"napari", "qtpy", "PyQt5", "magicgui"} & loaded
