"""Meet researchers where they train: batchlab trials from other frameworks' hooks.

- `batchlab.integrations.lightning`: `BatchlabLogger` (a Lightning `Logger`) and
  `BatchlabCallback` (batchlab's measurements of the live model).
- `batchlab.integrations.huggingface`: `BatchlabCallback` (a `transformers.TrainerCallback`).
- `batchlab.integrations.ray_tune`: `BatchlabLoggerCallback` (a Ray Tune `LoggerCallback`).

Each writes committed trials through batchlab's own trial API and warehouse writers
(`session.py`); docs/integrations.md. The frameworks are optional: `pip install
'batchlab[integrations]'`.
"""
