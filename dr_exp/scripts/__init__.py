"""Scripts and helpers that ship with dr_exp (the seed's ``dr_exp.scripts`` layout)."""
