"""The synthetic temporal VideoQA dataset the demo and the tests train on: scenes rendered to mp4
with ffmpeg (``render``, ``shots``), questions over what happened in them (``questions``), and
records (``make``: ``python -m data_shards synth``). Imports ``schema`` and ``ingest.video_io``
(the mp4 encoder)."""
