"""Short texts on unrelated topics, shared by the chunker tests that look for topic changes."""

RAINFOREST = (
    "The Amazon rainforest covers much of the Amazon basin of South America. It spans nine nations, with the "
    "majority of the forest in Brazil. The forest holds about 390 billion individual trees of 16,000 species. "
    "Jaguars, macaws and river dolphins live among its trees and rivers. Deforestation for cattle ranching "
    "threatens the rainforest's biodiversity."
)

PYTHON = (
    "Python is a high-level, general-purpose programming language. Its design philosophy emphasises code "
    "readability with significant indentation. It supports structured, object-oriented and functional "
    "programming. Python ships with a large standard library. Guido van Rossum began working on the "
    "language in the late 1980s."
)

BREAD = (
    "To bake bread, mix flour, water, salt and yeast into a dough. Knead the dough for ten minutes until it "
    "is smooth. Let it rise in a warm place for an hour. Shape the loaf and bake it at 220 degrees for thirty "
    "minutes. Cool the bread on a rack before slicing it."
)
