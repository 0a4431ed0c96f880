"""Array kernels: pure functions on numpy arrays / torch tensors, no I/O, no project imports.

Submodules are imported on use (some pull in faiss, umap or torch):

- ``sampling``    counter-based spatial positions per image
- ``binning``     grid cell ids, scatter sums, 2x2 pooling, per-cell top-k, purity
- ``knn``         faiss kNN graphs (exact / HNSW) with measured recall
- ``layout``      UMAP fit, placement of unfitted rows, layout normalisation, trustworthiness
- ``whitening``   S = inv(A^T A / N + eps I)
- ``param``       FFT image parameterisation with decorrelated colour
- ``transforms``  transformation robustness (pad, jitter, scale, rotate)
- ``objectives``  the batched direction x cosine objective
- ``dzi``         Deep Zoom pyramid maths and level of detail
- ``canvas``      painting icons into tiles
"""

__all__ = ["binning", "canvas", "dzi", "knn", "layout", "objectives", "param", "sampling", "transforms", "whitening"]
