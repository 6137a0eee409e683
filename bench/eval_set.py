# ruff: noqa: E501  (a table of queries: one per line reads best)
"""A labelled query set for ``../shared/pdfs/good``: what a person would ask of these
manuals, with the page(s) that answer it.

Each query was written by hand with the document it is about and a phrase printed on the
answering page. ``python -m bench.eval_set`` resolves each phrase against the documents' own
text layer to page numbers and writes a BEIR-style folder, ``bench/eval/good``
(``queries.jsonl``, ``corpus.jsonl``: corpus ids to (document sha256, page), and
``qrels/test.tsv``), which ``colqwen eval bench/eval/good`` reads. The PDFs stay outside the
repository; their sha256s pin the exact files.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "pdfs" / "good"
OUT = Path(__file__).resolve().parent / "eval" / "good"

R, RL, AMC = "R-intro.pdf", "reportlab-userguide.pdf", "auto-multiple-choice.en.pdf"

# (query, document, a phrase on the answering page; case and spacing do not matter)
QUERIES: list[tuple[str, str, str]] = [
    # R: An Introduction to R
    ("how do I get help on a function in R", R, "Try ?help.search"),
    ("arithmetic on vectors of different lengths", R, "2.2 Vector arithmetic"),
    ("generating regular sequences with seq", R, "2.3 Generating regular sequences"),
    ("missing values NA and NaN", R, "2.5 Missing values"),
    (
        "changing the mode of an object with as.character",
        R,
        "There is a large collection of functions of the form",
    ),
    (
        "what is a factor in R",
        R,
        "A factor is a vector object used to specify a discrete classification",
    ),
    ("tapply to compute group means", R, "The function tapply()"),
    ("index matrices for array subscripts", R, "5.3 Index matrices"),
    ("outer product of two arrays", R, "5.4.1 Mixed vector and array arithmetic"),
    ("solving a system of linear equations", R, "5.7.2 Linear equations and inversion"),
    ("eigenvalues and eigenvectors of a symmetric matrix", R, "5.7.3 Eigenvalues and eigenvectors"),
    ("singular value decomposition", R, "5.7.4 Singular value decomposition and determinants"),
    (
        "binding matrices together with cbind and rbind",
        R,
        "If some of the arguments to cbind() are vectors",
    ),
    (
        "what is a list and its components",
        R,
        "An R list is an object consisting of an ordered collection",
    ),
    ("attach and detach a data frame", R, "6.3.2 attach() and detach()"),
    ("reading a table of data from a file with read.table", R, "7.1 The read.table() function"),
    (
        "datasets that come with R",
        R,
        "All the datasets supplied with R are available directly by name",
    ),
    ("editing data in a spreadsheet-like window", R, "7.4 Editing data"),
    (
        "probability distribution functions like pnorm and qt",
        R,
        "8.1 R as a set of statistical tables",
    ),
    ("quantile-quantile plots of a sample", R, "Quantile-quantile (Q-Q) plots"),
    ("one and two sample t tests", R, "8.3 One- and two-sample tests"),
    ("for loops and if else statements", R, "9.2 Control statements"),
    (
        "writing your own function",
        R,
        "As we have seen informally along the way, the R language allows the user to create objects of mode function",
    ),
    ("named arguments and default values", R, "10.2 Defining new binary operators"),
    ("scope of variables and the <<- operator", R, "The special assignment operator, <<-"),
    ("customizing the environment with .Rprofile", R, "10.8 Customizing the environment"),
    ("formulae for statistical models", R, "11.1 Defining statistical models; formulae"),
    (
        "extracting regression coefficients from a fitted model",
        R,
        "Extract the regression coefficient",
    ),
    ("analysis of variance tables", R, "11.4 Analysis of variance and model comparison"),
    ("generalized linear models and families", R, "11.6 Generalized linear models"),
    (
        "logistic regression example",
        R,
        "The problem we consider is to fit both logistic and probit models",
    ),
    ("nonlinear least squares with nls", R, "11.7.1 Least squares"),
    ("local regression with loess", R, "The loess() function fits a nonparametric regression"),
    (
        "high-level plotting with plot()",
        R,
        "If x is a time series, this produces a time-series plot",
    ),
    (
        "adding mathematical notation to a plot",
        R,
        "the following code draws the formula for the Binomial probability",
    ),
    (
        "setting graphics parameters permanently with par",
        R,
        "Setting graphics parameters with the par() function changes",
    ),
    ("several plots on one page with mfrow", R, "12.5.4 Multiple figure environment"),
    ("installing and loading packages", R, "All R functions and datasets are stored in packages"),
    (
        "working with files and directories from R",
        R,
        "R has quite extensive facilities to access the OS",
    ),
    ("compressed files and archives", R, "14.4 Compression and Archives"),
    ("command-line options when starting R", R, "R accepts the following command-line options"),
    (
        "running short scripts with Rscript -e",
        R,
        "Short scripts can be passed to Rscript on the command-line",
    ),
    # ReportLab user guide
    ("how to install reportlab", RL, "1.6 Installation and Setup"),
    ("page size problems when printing", RL, "If you have problems printing your document"),
    ("setting fill and stroke colors on the canvas", RL, "canvas.setFillColorCMYK"),
    ("scaling the coordinate system", RL, "Figure 2-4: Scaling the coordinate system"),
    ("transparent colors with alpha", RL, "c.setFillColor(red50transparent)"),
    ("drawing right-aligned strings at different font sizes", RL, "canvas.drawRightString(x,y"),
    ("closing a path object", RL, "The close method closes the current graphical figure"),
    (
        "fonts and encodings, Asian languages",
        RL,
        "This chapter covers fonts, encodings and Asian language capabilities",
    ),
    ("using TrueType fonts", RL, "3.5 TrueType Font Support"),
    ("interactive PDF forms with checkboxes and text fields", RL, "4.7 Interactive Forms"),
    (
        "space before and after a flowable",
        RL,
        "These methods return how much space should follow or precede",
    ),
    (
        "the Paragraph class in platypus",
        RL,
        "The reportlab.platypus.Paragraph class is one of the most useful",
    ),
    ("hyperlinks and anchors inside paragraphs", RL, "is a link to</a> an anchor tag"),
    (
        "tables and table styles",
        RL,
        "The Table and LongTable classes derive from the Flowable class",
    ),
    ("preformatted text flowable", RL, "9.1 Preformatted(text, style"),
    ("building an index of words", RL, "Create an instance of SimpleIndex"),
    ("bar chart with axes", RL, "Figure 11-3: Two isolated axes"),
    ("pie chart with side labels", RL, "An example of a piechart with sideLabels"),
    (
        "listing a shape's properties with dumpProperties",
        RL,
        "we can use their dumpProperties() method",
    ),
    # Auto Multiple Choice manual
    ("license of auto multiple choice", AMC, "Auto Multiple Choice is free software"),
    ("color of the boxes students fill", AMC, "BoxColor: Color of the boxes"),
    ("a question with several correct answers", AMC, "5.4.8.1.2 Use in mathematics"),
    ("open questions graded by hand", AMC, "questionmultx environment"),
    (
        "group mode for inserting groups of questions",
        AMC,
        "Group insertion can be controlled by the group mode",
    ),
    ("using LuaLaTeX", AMC, "5.6.3 Using LuaLaTeX"),
    ("scanning and reading the students' copies", AMC, "6.6 Reading the copies"),
    ("the list of students", AMC, "6.8.1 List of the students"),
    ("photocopied subjects", AMC, "7.1 Photocopied subject"),
    (
        "black ratio threshold for ticked boxes",
        AMC,
        "gives the black ratio threshold over which a box",
    ),
    ("making anonymous pdf files", AMC, "10.2 Approach creation of anonymous pdf files"),
]


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def page_texts(path: Path) -> list[str]:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(path))
    try:
        return [norm(pdf[i].get_textpage().get_text_bounded()) for i in range(len(pdf))]
    finally:
        pdf.close()


def main() -> None:
    texts = {name: page_texts(SHARED / name) for name in {q[1] for q in QUERIES}}
    shas = {name: hashlib.sha256((SHARED / name).read_bytes()).hexdigest() for name in texts}
    corpus: dict[tuple[str, int], str] = {}
    qrels = []
    queries = []
    for i, (query, name, phrase) in enumerate(QUERIES, 1):
        pages = [n for n, t in enumerate(texts[name], 1) if norm(phrase) in t]
        if not pages or len(pages) > 4:
            raise SystemExit(f"{query!r}: the phrase {phrase!r} is on pages {pages} of {name}")
        qid = f"q{i:03d}"
        queries.append({"_id": qid, "text": query})
        for page in pages:
            cid = corpus.setdefault((name, page), f"c{len(corpus) + 1:04d}")
            qrels.append((qid, cid, 1))
    (OUT / "qrels").mkdir(parents=True, exist_ok=True)
    with (OUT / "queries.jsonl").open("w") as f:
        for q in queries:
            f.write(json.dumps(q) + "\n")
    with (OUT / "corpus.jsonl").open("w") as f:
        for (name, page), cid in sorted(corpus.items(), key=lambda kv: kv[1]):
            f.write(json.dumps({"_id": cid, "doc_id": shas[name], "page": page, "source": name})
                    + "\n")  # fmt: skip
    with (OUT / "qrels" / "test.tsv").open("w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, cid, score in qrels:
            f.write(f"{qid}\t{cid}\t{score}\n")
    print(f"{len(queries)} queries, {len(corpus)} relevant pages -> {OUT}")


if __name__ == "__main__":
    main()
