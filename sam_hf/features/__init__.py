"""The frozen-encoder embedding cache: compute each image's (and phrase's) features once.

When an encoder is frozen (and carries no LoRA) its output for an input never changes, yet an
uncached fine-tune recomputes it every epoch -- and the image encoder is most of SAM's compute.
This stage stores the features on disk beside the Arrow data and feeds them to the training
module instead of the pixels (and, for SAM3, instead of running the text encoder).

By job: :mod:`~sam_hf.features.cache` decides whether a run uses the cache (from the config,
:mod:`sam_hf.config.cache_settings`, and the built model's ``requires_grad``,
:mod:`sam_hf.models.freezing`); :mod:`~sam_hf.features.keys` says what the stored features
depend on and names their folder; :mod:`~sam_hf.features.store` writes and reads them;
:mod:`~sam_hf.features.dataset` hands them to the training module with each sample.

What is cached:

- SAM2: the three FPN feature maps of ``Sam2Model.vision_encoder`` with the frozen
  ``no_memory_embedding`` added to the lowest-resolution one, i.e. everything
  :meth:`~sam_hf.models.sam2_training.Sam2ForTraining.image_embeddings` computes *before* the mask
  decoder's trainable ``conv_s0``/``conv_s1`` projections.
- SAM3 images: the four FPN maps of ``Sam3Model.vision_encoder`` (``fpn_hidden_states``); the
  sine position encodings are recomputed from their shapes and the ViT's ``last_hidden_state``,
  which ``Sam3Model`` does not read, is not stored.
- SAM3 phrases (:class:`~sam_hf.features.store.PhraseFeatureCache`):
  ``get_text_features(...).pooler_output`` (CLIP text encoder + ``text_projection``) of each
  distinct phrase, its valid token rows only; padded rows are masked everywhere downstream
  and are fed as zeros.

Features are stored exactly as the encoder produced them -- float32 in an fp32 run; under
``bf16: true`` the cache is filled under the same autocast, so a cached run sees the
very numbers an uncached run computes, and the files are half the size.

Where: ``<dataset_path>/.embedding_cache/<key>/`` with one safetensors file per image and flip
variant (``000012_n.safetensors`` / ``000012_f.safetensors``), ``key.json`` saying what the key
was made of, and ``complete.json`` once every file is written. The key is a hash of the model
id and revision, the resolution, the image normalisation, a hash of the encoder's weights
(so another checkpoint, a different random init, ``init_from`` or a fine-tuned encoder never
reuse features), the split's Arrow fingerprint (another subset or edit of the data gets its own
folder), the autocast dtype and the library versions. Any change of key means a new folder; old
folders are not touched (delete ``.embedding_cache`` to reclaim the disk). Phrase features are
keyed by the text encoder's weights and the tokenizer, not by the data, so one folder serves
every split.

Augmentation: a horizontal flip is decided per sample by its seed, so the cache holds the
unflipped and (when ``hflip_prob > 0``) the flipped features of every image and the dataset
picks the variant the seed chose. Colour jitter changes the pixels every epoch and cannot be
cached: ``cache_embeddings: auto`` then trains uncached, ``true`` is a config error.

Size per image variant in float32 (half under bf16): SAM2's FPN has 256 channels at 1/4, 1/8
and 1/16 of the input, about 88 MB at 1024 px (22 MB at 512); SAM3's at 4x, 2x, 1x and 0.5x of
the 72 x 72 token grid at 1008 px is about 113 MB. A phrase takes about 1 KB per token.
"""
