"""Our own model families, one file each (the registry that builds them from a run's
``config.json`` is :data:`mmfast_export.runs.MODELS`).

- ``encoder.py``: the CNN image encoder every family starts from; ``text_encoder.py``: the
  Transformer text encoder of the retriever and VQA.
- ``captioner_lstm.py``, ``captioner_transformer.py``: captioners (an explicit decoding step).
- ``retriever.py``: dual encoder + cross-attention re-ranker.
- ``vqa.py``: question-guided attention + answer classifier; ``vqa_transformer.py``: a joint
  Transformer over [CLS], question tokens and regions + answer classifier.
"""
