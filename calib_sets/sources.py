"""Sources: image folders and files, video files, the bundled frames, YOLO/COCO datasets and text corpora.

Building a source lists and checks files (a cheap structural check, no decode) but loads no pixels.
Unreadable files in a folder are skipped with one warning and listed in `CalibSet.skipped` / the manifest.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from calib_sets.decode import IMAGE_EXTS, looks_complete, too_large
from calib_sets.errors import EmptyCalibSetError, SourceNotFoundError, UndecodableImageError
from calib_sets.files import Check, checked_items, frame_number, image_item, list_images, name_some
from calib_sets.sample import CalibSet
from calib_sets.video import video_set

if TYPE_CHECKING:
    from calib_sets.text import TextSet

BUNDLED = Path(__file__).parent / "bundled"


class Source:
    """Constructors of CalibSets. Every one is lazy: pixels are decoded while iterating."""

    @staticmethod
    def image_files(paths: Iterable[str | Path], *, source: str = "files", check: Check = "header") -> CalibSet:
        """An explicit list of image files. A missing file is an error; an unreadable one is skipped."""
        files = [Path(x) for x in paths]
        for p in files:
            if not p.is_file():
                raise SourceNotFoundError(f"image {p} does not exist; check the path.")
        items, skipped = checked_items(files, source, check)
        return CalibSet(items, skipped=skipped)

    @staticmethod
    def images(path: str | Path, *, recursive: bool = True, check: Check = "header") -> CalibSet:
        """A folder of images (jpg/png/bmp/webp/tif, sorted by relative path), or one image file.
        check: "header" (default) checks each file's structure without decoding; "full" decodes each file
        once up front (slower, also catches corrupt data inside a complete file); "none" checks nothing."""
        root = Path(path)
        if not root.exists():
            raise SourceNotFoundError(f"calibration source {root} does not exist; pass a folder of images, an "
                                      "image, a video file, a .toml recipe or 'bundled:vtest'.")
        if root.is_file():
            big = too_large(root) if check != "none" else None
            if big:
                raise UndecodableImageError(f"{root}: {big}.")
            if not looks_complete(root, full=check == "full"):
                raise UndecodableImageError(f"{root} does not decode as an image (truncated or not an image); "
                                            "give a valid image file.")
            return CalibSet([image_item(root, root.name, str(root), 0)])
        files = list_images(root, recursive)
        items, skipped = checked_items(files, str(root), check, root=root)
        if not items:
            raise EmptyCalibSetError(
                f"calibration source {root} holds no decodable image: {len(files)} file(s) with extensions "
                f"{sorted(IMAGE_EXTS)} (recursive={recursive}), {len(skipped)} of them unreadable"
                + (f" ({name_some(skipped, 5)})" if skipped else "") + "; add images or point at the right folder.")
        return CalibSet(items, skipped=skipped)

    @staticmethod
    def video(path: str | Path, every: int = 1, start: int = 0, stop: int | None = None) -> CalibSet:
        """Frames start, start+every, ... < stop of a video file (keys 'name.mp4#frame=N')."""
        return video_set(path, every=every, start=start, stop=stop)

    @staticmethod
    def bundled(name: str = "vtest", frames: Iterable[int] | None = None) -> CalibSet:
        """Frames shipped under calib_sets/bundled/<name>/ (file names end with the frame number);
        `frames` keeps only those frame numbers."""
        folder = BUNDLED / name
        if not folder.is_dir():
            have = sorted(d.name for d in BUNDLED.iterdir() if d.is_dir()) if BUNDLED.is_dir() else []
            raise SourceNotFoundError(f"no bundled set {name!r} in {BUNDLED}; bundled sets: {have}.")
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=frame_number)
        if frames is not None:
            wanted = set(frames)
            files = [f for f in files if frame_number(f) in wanted]
        if not files:
            raise EmptyCalibSetError(f"bundled set {name!r}: the frame filter selects no frame "
                                     f"(the set holds frames of {folder}).")
        # Bundled files are ours and were checked when they were made: no per-file check at each load.
        items, _ = checked_items(files, f"bundled:{name}", "none", indices=[frame_number(f) for f in files])
        return CalibSet(items)

    @staticmethod
    def yolo_dataset(yaml_path: str | Path, split: str = "val", *, check: Check = "header") -> CalibSet:
        """An Ultralytics dataset yaml (path/train/val/test/names); labels go to Sample.labels."""
        from calib_sets.datasets import yolo_dataset

        return yolo_dataset(Path(yaml_path), split, check)

    @staticmethod
    def image_folder(root: str | Path, *, check: Check = "header") -> CalibSet:
        """A classification set in the ImageFolder layout ROOT/<class>/<images>; class = sorted folder index,
        stored as a whole-image label row (see calib_sets.datasets.image_folder)."""
        from calib_sets.datasets import image_folder

        return image_folder(Path(root), check)

    @staticmethod
    def coco(json_path: str | Path, images_dir: str | Path, *, check: Check = "header") -> CalibSet:
        """A COCO instances json + its image folder; boxes become YOLO-style Sample.labels."""
        from calib_sets.datasets import coco_dataset

        return coco_dataset(Path(json_path), Path(images_dir), check)

    @staticmethod
    def text(path: str | Path, seq_len: int = 512, n: int | None = None, *,
             tokenizer: object | None = None, mode: Literal["windows", "documents"] = "windows",
             seed: int = 0) -> TextSet:
        """A text corpus for LLM calibration: token windows of seq_len (or documents), n of them drawn by seed;
        tokenizer: a Hugging Face tokenizer / function str -> ids, or "words" (default) / "chars"."""
        from calib_sets.text import text_set

        return text_set(Path(path), seq_len=seq_len, n=n, tokenizer=tokenizer, mode=mode, seed=seed)
