"""What the networks see: input intensity normalization, the site check of its per-site
maps, and volumes on the network scale and grid."""
