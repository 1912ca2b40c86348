"""Paired embeddings of real pretrained multimodal contrastive models (see README.md here).

CLIP ViT-B/16 (COCO val2017) and ConVIRT (MIMIC-CXR), trained and at random initialisation,
500 pairs x 512 dimensions each, from the ``Figure_1_Modality_Gap/`` folder of
``Weixin-Liang/Modality-Gap`` (Liang et al., NeurIPS 2022), MIT License: the licence text is
``LICENSE`` beside these files and travels with them.
"""
