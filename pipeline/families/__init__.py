"""GAN families: one spec per family (networks, optimizers, phases, fields, generation inputs)."""
