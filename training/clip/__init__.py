"""The teacher CLIP: an open_clip model trained on a fully-captioned split, saved as a normal checkpoint.

CoCu ranks concepts with a pretrained CLIP. On an offline machine none can be downloaded, so cocu
trains one on the synthetic world's ``teacher/`` split, whose captions name everything visible, and
hands it to curation through the same open_clip call a user makes for ``ViT-B-16`` / ``openai``.
The output folder is an ordinary open_clip checkpoint::

    OUT/<name>.json                  model config; open_clip.add_model_config(it) registers <name>
    OUT/<name>.safetensors           weights: create_model_and_transforms(<name>, pretrained=this file)
    OUT/open_clip_config.json        with open_clip_model.safetensors (a hard link): 'local-dir:OUT'
    OUT/teacher.json                 training record and the zero-shot evaluation

The zero-shot evaluation ranks every class name of the world ("a photo of a {}.") for images whose
present concepts are known (the world's truth sidecar), which says how much the teacher knows.
"""

from cocu.training.clip.config import (
    DEFAULT_MODEL_CONFIG,
    DEFAULT_PROMPT,
    RECORD_NAME,
    Teacher,
    TeacherConfig,
    TeacherDeadline,
)
from cocu.training.clip.files import teacher_files
from cocu.training.clip.loop import fit_teacher, save_teacher, train_teacher

__all__ = [
    "DEFAULT_MODEL_CONFIG",
    "DEFAULT_PROMPT",
    "RECORD_NAME",
    "Teacher",
    "TeacherConfig",
    "TeacherDeadline",
    "fit_teacher",
    "save_teacher",
    "teacher_files",
    "train_teacher",
]
