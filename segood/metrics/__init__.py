"""Evaluation metrics: OOD (AUROC / AUPR / FPR95) and confusion-matrix IoU (numpy only)."""
