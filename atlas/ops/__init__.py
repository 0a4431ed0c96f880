"""Array kernels: pure functions on numpy arrays / torch tensors, no I/O, no project imports.

Submodules are imported on use (some pull in faiss, umap or torch):

- ``sampling``    counter-based spatial positions per image
- ``binning``     grid cell ids, scatter sums, 2x2 pooling, per-cell top-k, purity
- ``knn``         faiss kNN graphs (exact / HNSW) with measured recall
- ``layout``      UMAP fit, placement of unfitted rows, layout normalisation, trustworthiness
- ``whitening``   S = inv(A^T A / N + eps I)
- ``param``       image parameterisations: FFT (Lucid), MACO (phase only), Laplacian pyramid; coarse-to-fine upsampling
- ``transforms``  transformation robustness (pad, jitter, translate, scale, rotate; Lucid's set and the icon-size set)
- ``objectives``  the batched direction x cosine objective; distinctness (own-cell rank, retrieval@k)
- ``inversion``   the icon renderer: parameterisation + transforms + objective + schedule, best of k
- ``dzi``         Deep Zoom pyramid maths and level of detail
- ``canvas``      painting icons into tiles
- ``placement``   placing new points on a fitted layout (reduce's unfitted rows, located images)
- ``located``     pictures of a located image: the atlas colour map, tinted positions, the icon grid
- ``patches``     patch-test geometry: named and seeded places, resizing, pasting, noise patches
- ``compare``     two networks on one layout: positions mapped across grids, coherence, relation change, class shift, rank
"""

__all__ = ["binning", "canvas", "compare", "dzi", "inversion", "knn", "layout", "located", "objectives", "param", "patches",
           "placement", "sampling", "transforms", "whitening"]
