"""Ultralytics YOLO detection checkpoints (.pt): trusted loading, FP32 ONNX export, letterbox, decode + NMS."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from exporters.outset import file_sha256
from qcal.errors import CheckpointError, UntrustedCheckpointError
from qcal.models.base import Detections, Prepared

PAD_VALUE = 114  # Ultralytics' letterbox grey




def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping aspect ratio and pad to size x size with grey 114, as Ultralytics does.

    image: HxWx3 uint8 RGB -> (size x size x 3 uint8, scale, (pad_x, pad_y)).
    """
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    if (nw, nh) != (w, h):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    px, py = (size - nw) / 2, (size - nh) / 2
    top, bottom = round(py - 0.1), round(py + 0.1)
    left, right = round(px - 0.1), round(px + 0.1)
    out = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return out, r, (left, top)


def decode_yolo(output: np.ndarray, *, conf: float, iou: float, max_det: int, scale: float,
                pad: tuple[float, float], orig_hw: tuple[int, int]) -> Detections:
    """YOLOv8-style output (1, 4 + nc, A): cx, cy, w, h in letterbox pixels, then class probabilities."""
    pred = output[0].T  # (A, 4 + nc)
    cls_scores = pred[:, 4:]
    classes = cls_scores.argmax(1)
    scores = cls_scores[np.arange(len(pred)), classes]
    keep = scores > conf
    pred, scores, classes = pred[keep], scores[keep], classes[keep]
    if len(pred) == 0:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    xywh = pred[:, :4].copy()
    xywh[:, 0] -= xywh[:, 2] / 2  # top-left corner, as cv2's NMS wants
    xywh[:, 1] -= xywh[:, 3] / 2
    raw = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), classes.tolist(), conf, iou, top_k=max_det)
    idx = np.asarray(raw, dtype=np.int64).reshape(-1)[:max_det]
    xyxy = np.concatenate([xywh[idx, :2], xywh[idx, :2] + xywh[idx, 2:]], axis=1)
    xyxy[:, [0, 2]] = (xyxy[:, [0, 2]] - pad[0]) / scale
    xyxy[:, [1, 3]] = (xyxy[:, [1, 3]] - pad[1]) / scale
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, orig_hw[1])
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, orig_hw[0])
    return Detections(xyxy.astype(np.float32), scores[idx].astype(np.float32), classes[idx].astype(np.int64))


def bare_state_dict(path: Path) -> str | None:
    """What a .pt holding only weights holds ("N tensors", "N tensors under 'state_dict'"), or None when it is
    anything else (an Ultralytics checkpoint, a corrupt file). torch.load with weights_only=True unpickles no
    code: it stops at the first class reference, which an Ultralytics checkpoint has and a state_dict has not."""
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:   # a class reference (Ultralytics), not a zip file, corrupt: the loader below explains
        return None

    def tensors(d: Any) -> int:
        return sum(isinstance(v, torch.Tensor) for v in d.values()) if isinstance(d, dict) else 0

    if not isinstance(obj, dict) or "model" in obj or "ema" in obj:
        return None
    if tensors(obj):
        return f"{tensors(obj)} tensors"
    nested = {str(k): tensors(v) for k, v in obj.items() if tensors(v)}
    if nested:
        return f"{sum(nested.values())} tensors under {sorted(nested)}"
    return None


class YoloAdapter:
    """An Ultralytics detection checkpoint. Loading unpickles the file, so the caller must trust it."""

    family = "yolo"
    task = "detect"

    def __init__(self, model: Any, source: str, imgsz: int = 640, sha256: str = "") -> None:
        self.model = model            # ultralytics.nn.tasks.DetectionModel
        self.source = source
        self.imgsz = imgsz
        self._sha256 = sha256
        names = getattr(model, "names", None) or {}
        self.class_names = {int(k): str(v) for k, v in dict(names).items()}
        self.input_name = "images"
        self.conf = 0.001             # evaluation thresholds (as Ultralytics' val)
        self.iou = 0.7
        self.max_det = 300

    @classmethod
    def load(cls, path: str | Path, *, trust_checkpoint: bool, imgsz: int = 640) -> YoloAdapter:
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"checkpoint {p} does not exist. Pass the path of a YOLO .pt file.")
        if not trust_checkpoint:
            raise UntrustedCheckpointError(
                f"{p} is a pickle: loading it runs code from the file. If you trust it, pass "
                "trust_checkpoint=True (CLI: --trust-checkpoint); otherwise export it to ONNX where you trust it.")
        from qcal.runtime.env import prepare_third_party_env

        prepare_third_party_env()
        try:
            from ultralytics import YOLO
        except ImportError as e:
            raise CheckpointError("Ultralytics is not installed: `pip install qcal[yolo]`.") from e
        bare = bare_state_dict(p)
        if bare is not None:
            raise CheckpointError(
                f"{p} is a bare state_dict ({bare}): weights without the model's architecture, so qcal cannot "
                "rebuild the network from it. qcal needs an Ultralytics checkpoint, saved by Ultralytics with the "
                "model object (the best.pt / last.pt of training, or YOLO(...).save('model.pt')); or load these "
                "weights into your model class and pass the torch.nn.Module: qcal.quantize(module, calib, "
                "example_input=torch.zeros(1, 3, H, W)).")
        try:
            model = YOLO(str(p), task="detect").model
        except Exception as e:  # a corrupt file surfaces as any of pickle/zip/torch errors
            raise CheckpointError(f"{p} could not be loaded as an Ultralytics checkpoint: {e}") from e
        if model is None or not hasattr(model, "model"):
            raise CheckpointError(f"{p} holds no Ultralytics detection model.")
        return cls(model, str(p), imgsz, file_sha256(p))

    @classmethod
    def from_yaml(cls, yaml_name: str = "yolov8n.yaml", *, nc: int = 80, imgsz: int = 640, seed: int = 0) -> YoloAdapter:
        """An untrained model built from an Ultralytics architecture yaml (offline; for tests)."""
        from qcal.runtime.env import prepare_third_party_env

        prepare_third_party_env()
        import torch
        from ultralytics.nn.tasks import DetectionModel

        torch.manual_seed(seed)
        model = DetectionModel(yaml_name, nc=nc, verbose=False)
        model.names = {i: f"class{i}" for i in range(nc)}
        return cls(model, yaml_name, imgsz, hashlib.sha256(f"{yaml_name}:{nc}:{seed}".encode()).hexdigest())

    def model_hash(self) -> str:
        return self._sha256

    def float_module(self) -> Any:
        """A fused (BN folded), eval-mode, export-ready copy of the torch model: forward returns the
        (1, 4 + nc, anchors) tensor the ONNX graph has. DFL's fixed decode conv is frozen (requires_grad False),
        so passes leave it alone."""
        import copy

        import torch
        from ultralytics.nn.modules import DFL, C2f, Detect

        model = copy.deepcopy(self.model).float().eval().fuse()
        for p in model.parameters():   # fuse() freezes the fused convs; only DFL's is fixed by design
            p.requires_grad = True
        for m in model.modules():
            if isinstance(m, Detect):
                m.dynamic, m.export, m.format = False, True, "onnx"  # type: ignore[assignment]
                m.shape = None
            elif isinstance(m, C2f):
                m.forward = m.forward_split  # type: ignore[method-assign] # the Split-based C2f Ultralytics exports (no slicing of a chunk)
            elif isinstance(m, DFL):
                m.conv.weight.requires_grad_(False)
        with torch.no_grad():
            model(torch.zeros(1, 3, self.imgsz, self.imgsz))  # builds anchors
        return model

    def with_module(self, module: Any, tag: str) -> YoloAdapter:
        """The same adapter over a changed float module (e.g. after AdaQuant); `tag` enters the model hash."""
        sha = hashlib.sha256(f"{self._sha256}:{tag}".encode()).hexdigest()
        a = YoloAdapter(module, self.source, self.imgsz, sha)
        a.conf, a.iou, a.max_det = self.conf, self.iou, self.max_det
        return a

    def export_onnx(self, path: Path, *, opset: int) -> None:
        """FP32 ONNX with output (1, 4 + nc, anchors), prepared as Ultralytics' own exporter prepares it."""
        import torch

        model = self.float_module()
        for p in model.parameters():
            p.requires_grad = False
        x = torch.zeros(1, 3, self.imgsz, self.imgsz)
        with torch.no_grad():
            torch.onnx.export(model, (x,), str(path), opset_version=opset, input_names=[self.input_name],
                              output_names=["output0"], do_constant_folding=True, dynamo=False)

    def prepare(self, image: np.ndarray) -> Prepared:
        boxed, scale, pad = letterbox(image, self.imgsz)
        x = np.ascontiguousarray(boxed.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        return Prepared({self.input_name: x}, {"scale": scale, "pad": pad, "orig_hw": image.shape[:2]})

    def postprocess(self, outputs: list[np.ndarray], prepared: Prepared) -> Detections:
        m = prepared.meta
        return decode_yolo(outputs[0], conf=self.conf, iou=self.iou, max_det=self.max_det,
                           scale=m["scale"], pad=m["pad"], orig_hw=m["orig_hw"])
