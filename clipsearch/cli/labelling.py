"""Labels: ``labels``, ``classify``, ``eval``, ``matrix``, the ``tag`` group, ``tags`` and the
``classifier`` group."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (
    DeviceOpt, FolderOpt, Group, JsonOpt, LibraryOpt, ModelOpt, SidecarStyle, SidecarStyleOpt, Stages, app,
    command, open_library, show, show_xmp_report, skipping, stderr, wrote,
)


LabelsOpt = Annotated[Optional[str], typer.Option(
    "--labels", "-l", metavar="SET_OR_FILE",
    help="A bundled label set (see `clipsearch labels`) or a label file: .txt, .yaml or .toml.",
    show_default=False)]
ClassifierOpt = Annotated[Optional[str], typer.Option(
    "--classifier", "-c", metavar="NAME",
    help="A few-shot classifier trained with `clipsearch classifier train`, instead of "
                               "--labels.", show_default=False)]
TemplateOpt = Annotated[Optional[list[str]], typer.Option(
    "--template", "-t", metavar="TEMPLATE",
    help="A prompt template with {} for the label, or a bundled template set: imagenet, photo, "
                             "simple. Repeatable; the prompts are averaged. Default: the label set's own, else "
                             "photo.", show_default=False)]


@command
def labels(
    name: Annotated[Optional[str], typer.Argument(metavar="SET_OR_FILE", help="Show the labels of this set or "
                                                                             "label file.", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the bundled label sets and prompt templates, or the labels of one set.

    Label files are plain text (one label per line) or YAML/TOML with per-label synonyms,
    prompts, thresholds and parents; see the README.

    Example: `clipsearch labels demo-colours`
    """
    from ..labels import LabelSet, available_label_sets, available_templates, resolve_templates

    if name is None:
        sets = {n: LabelSet.load(n) for n in available_label_sets()}
        templates = {n: len(resolve_templates([n])) for n in available_templates()}
        data = {"label_sets": {n: len(ls.labels) for n, ls in sets.items()}, "templates": templates}
        lines = [f"{n}\t{len(ls.labels)} labels" for n, ls in sets.items()]
        lines += [f"template set {n}\t{k} templates" for n, k in templates.items()]
        show(json_out, data, lines)
        return
    label_set = LabelSet.load(name)
    data = {"name": label_set.name, "templates": list(label_set.templates),
            "labels": [{"name": lb.name, "parent": lb.parent, "synonyms": list(lb.synonyms),
                        "prompts": list(lb.prompts), "threshold": lb.threshold} for lb in label_set.labels]}
    lines = [lb.name + (f"\t< {' < '.join(label_set.ancestors(lb.name))}" if lb.parent else "")
             for lb in label_set.labels]
    show(json_out, data, lines)


@command
def classify(
    images: Annotated[list[str], typer.Argument(metavar="IMAGE", help="Image files (in the library or not), "
                                                "or id:N.", show_default=False)],
    labels: LabelsOpt = None,
    classifier: ClassifierOpt = None,
    template: TemplateOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per image.")] = 5,
    library: LibraryOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Name what is in images with a label set (zero-shot) or a trained classifier.

    Prints each image's path, then its best labels: probability (softmax over the whole
    label set, at the model's logit scale), cosine similarity, label. Images already in
    the library use their stored vectors.

    Example: `clipsearch classify photo.jpg --labels imagenet --top-k 3`
    """
    _labels_or_classifier(labels, classifier)
    with open_library(library, model=model, device=device, create=model is not None) as lib:
        results = lib.classify(images, labels, templates=template or (), classifier=classifier, top_k=top_k)
    lines = []
    for r in results:
        if r.error:
            skipping(r.path, r.error)
            continue
        lines.append(r.path)
        lines += [f"  {p.probability:11.4f}  {p.cosine:6.4f}  {p.label}" for p in r.labels]
    if lines:
        lines.insert(0, f"  {'probability':>11}  {'cosine':>6}  label")
    show(json_out, [r.to_dict() for r in results], lines)
    if any(r.error for r in results):
        raise typer.Exit(1)


PlotOpt = Annotated[Optional[Path], typer.Option(
    "--plot", metavar="FILE", help="Also draw it into this picture (.png, .svg or .pdf); needs the plot extra.",
    show_default=False)]


@command
def eval(  # noqa: A001 - the command's name
    examples: Annotated[Path, typer.Option(
        "--examples", "-e", metavar="DIR", help="A folder with one sub-folder of images per true label.",
        show_default=False)],
    labels: Annotated[Optional[str], typer.Option(
        "--labels", "-l", metavar="SET_OR_FILE",
        help="Take the labels' prompts, synonyms and parents from this set or file. "
                               "Default: the sub-folders' names.", show_default=False)] = None,
    classifier: ClassifierOpt = None,
    template: TemplateOpt = None,
    compare_templates: Annotated[bool, typer.Option(
        "--compare-templates", help="Also score each template alone, and their ensemble.")] = False,
    few_shot: Annotated[Optional[int], typer.Option(
        "--few-shot", min=1, metavar="K", help="Also train K-shot probes (1, 2, 4, ... K per label, 3 draws) and score "
                                  "them against zero-shot on the held-out rest.", show_default=False)] = None,
    plot: PlotOpt = None,
    library: LibraryOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Measure a label set or a trained classifier on your own labelled images.

    Prints top-1 and top-5 accuracy, each label's precision, recall and support, the most
    confused pairs and the misclassified files; `--compare-templates` and `--few-shot`
    add the prompt-engineering and few-shot views. Images already in the library use
    their stored vectors.

    Example: `clipsearch eval --examples ./labelled --labels photos --compare-templates --plot confusion.png`
    """
    with open_library(library, model=model, device=device, create=model is not None) as lib:
        result = lib.evaluate(examples, labels, templates=template or (), classifier=classifier,
                              compare_templates=compare_templates, few_shot=few_shot)
    if plot is not None:
        from ..plots import confusion_figure

        confusion_figure(result, plot)
        wrote(plot)
    for e in result.unreadable:
        skipping(e.path, e.reason)
    width = max(len(c.label) for c in result.classes)
    lines = [f"{result.classifier} ({result.source}) on {result.images} images: "
             f"top-1 {result.top1:.3f}, top-5 {result.top5:.3f}", "",
             f"{'label':{width}}  precision  recall  support"]
    lines += [f"{c.label:{width}}  {'-' if c.precision is None else f'{c.precision:.3f}':>9}  {c.recall:6.3f}  "
              f"{c.support:7d}" for c in result.classes]
    if result.most_confused:
        lines += ["", "most confused (true -> predicted: images)"]
        lines += [f"  {c.true} -> {c.predicted}: {c.count}" for c in result.most_confused]
    if result.misses:
        lines += ["", "misclassified (probability of the wrong answer, true -> predicted, file)"]
        lines += [f"  {m.probability:.3f}  {m.true} -> {m.predicted}  {m.path}" for m in result.misses]
    if result.templates:
        lines += ["", "templates (zero-shot, alone and together)", f"  {'top-1':>6} {'top-5':>6}  template"]
        lines += [f"  {t.top1:6.3f} {t.top5:6.3f}  {t.template}" for t in result.templates]
    if result.few_shot:
        lines += ["", "few-shot probes against zero-shot on the same held-out images",
                  f"  {'shots':>5} {'zero-shot':>9} {'few-shot':>9}  (mean of draws; held-out images)"]
        lines += [f"  {s.shots:5d} {s.zero_shot:9.3f} {s.few_shot:9.3f}  ({s.draws}; {s.tested})" for s in result.few_shot]
        beat = result.shots_to_beat_zero_shot
        lines.append(f"  the probe beats zero-shot from {beat} shot{'s' * (beat != 1)} per label" if beat
                     else "  no probe beat zero-shot: the labels' words already carry what the examples teach")
    show(json_out, result.to_dict(), lines)


@command
def matrix(
    images: Annotated[list[str], typer.Argument(metavar="IMAGE", help="Image files (in the library or not), "
                                                "or id:N.", show_default=False)],
    labels: Annotated[str, typer.Option("--labels", "-l", metavar="SET_OR_FILE",
                                        help="A bundled label set's name, or a label file.", show_default=False)],
    template: TemplateOpt = None,
    plot: PlotOpt = None,
    library: LibraryOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """The cosine similarity of each image to each label, as in the CLIP tutorial.

    Prints one row per image; `--plot` draws the matrix with the images' thumbnails along
    one axis and the labels along the other.

    Example: `clipsearch matrix a.jpg b.jpg c.jpg --labels demo-colours --plot matrix.png`
    """
    with open_library(library, model=model, device=device, create=model is not None) as lib:
        result = lib.similarity_matrix(images, labels, templates=template or ())
    if plot is not None:
        from ..plots import similarity_figure

        similarity_figure(result, plot)
        wrote(plot)
    for e in result.unreadable:
        skipping(e.path, e.reason)
    lines = ["\t".join(["image", *result.labels])]
    lines += ["\t".join([path, *(f"{c:.4f}" for c in row)]) for path, row in zip(result.paths, result.cosine)]
    show(json_out, result.to_dict(), lines)
    if result.unreadable:
        raise typer.Exit(1)


tag_app = typer.Typer(cls=Group, no_args_is_help=False)
app.add_typer(tag_app, name="tag")


def _labels_or_classifier(labels: str | None, classifier: str | None) -> None:
    """A usage error (exit code 2) unless exactly one of them is given."""
    if labels is None and classifier is None:
        raise typer.BadParameter("give --labels SET_OR_FILE or --classifier NAME", param_hint="--labels")
    if labels is not None and classifier is not None:
        raise typer.BadParameter("give --labels or --classifier, not both", param_hint="--classifier")


@command(group=tag_app, callback=True, interrupted="interrupted: the tags are as they were before this run")
def tag(
    ctx: typer.Context,
    labels: LabelsOpt = None,
    classifier: ClassifierOpt = None,
    template: TemplateOpt = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", min=0.0, max=1.0,
        help="Least probability (softmax over the label set) a tag needs; a label file's own per-label "
             "thresholds win. 0: only --top-k counts.")] = 0.1,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Most tags per image (before parents).")] = 5,
    min_cosine: Annotated[Optional[float], typer.Option(
        "--min-cosine", min=-1.0, max=1.0, help="Also require this cosine similarity to the label.",
        show_default=False)] = None,
    folder: FolderOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be tagged; write nothing.")] = False,
    library: LibraryOpt = None,
    device: DeviceOpt = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Tag every image with labels from a label set or a trained classifier.

    Uses the stored vectors: nothing is decoded or encoded again. Re-running replaces the
    tags of the same label set (or classifier) only; manual tags always win. A confident
    label also tags its parents (from a YAML/TOML label file).
    Subcommands: `add`, `remove` (manual tags) and `export` (CSV, JSON, XMP sidecars).

    Example: `clipsearch tag --labels demo-colours --threshold 0.5`
    """
    if ctx.invoked_subcommand is not None:
        return
    _labels_or_classifier(labels, classifier)
    stages = Stages(quiet or json_out)
    try:
        with open_library(library, device=device, create=False) as lib:
            report = lib.tag(labels, templates=template or (), classifier=classifier, threshold=threshold,
                             top_k=top_k, min_cosine=min_cosine, folders=folder or (), dry_run=dry_run,
                             progress=stages)
    finally:
        stages.stop()
    verb = "would tag" if report.dry_run else "tagged"
    lines = [f"{n}\t{label}" for label, n in report.counts.items()]
    if not json_out:
        stderr().print(f"{verb} {report.tagged} of {report.images} images with {report.tags} tags from "
                        f"{report.label_set} ({report.source}) in {report.seconds:.1f}s", markup=False)
    show(json_out, report.to_dict(), lines)


ImageArg = Annotated[str, typer.Argument(metavar="IMAGE", help="An indexed image: its path, or id:N.",
                                         show_default=False)]
LabelsArg = Annotated[list[str], typer.Argument(metavar="LABEL", help="One or more labels.", show_default=False)]


@command(group=tag_app, name="add")
def tag_add(image: ImageArg, label: LabelsArg, library: LibraryOpt = None) -> None:
    """Tag an image by hand. Manual tags win over automatic ones and survive re-tagging.

    Example: `clipsearch tag add ~/Photos/rex.jpg dog "my dog"`
    """
    _tag_by_hand(library, image, label, removed=False)


@command(group=tag_app, name="remove")
def tag_remove(image: ImageArg, label: LabelsArg, library: LibraryOpt = None) -> None:
    """Take a label off an image by hand, automatic tags included; re-tagging will not put it back.

    Example: `clipsearch tag remove ~/Photos/rex.jpg cat`
    """
    _tag_by_hand(library, image, label, removed=True)


def _tag_by_hand(library: Path | None, image: str, labels: list[str], removed: bool) -> None:
    with open_library(library, create=False) as lib:
        change = lib.remove_tag if removed else lib.add_tag
        for one in labels:
            image_id = change(image, one)
        path = lib.image_paths([image_id])[image_id]
    listed = ", ".join(map(repr, labels))
    stderr().print(f"{'removed' if removed else 'added'} {listed} {'from' if removed else 'to'} {path} "
                    f"(id:{image_id})", markup=False)


class ExportFormat(str, Enum):
    csv = "csv"
    json = "json"
    xmp = "xmp"



@command(group=tag_app, name="export")
def tag_export(
    fmt: Annotated[ExportFormat, typer.Argument(
        help="csv or json: every tag to stdout (or --output); xmp: keywords into each image's XMP sidecar.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="FILE",
                                                   help="Write CSV/JSON to this file.", show_default=False)] = None,
    folder: FolderOpt = None,
    sidecar_style: SidecarStyleOpt = SidecarStyle.default,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="XMP: report what would change; write nothing.")] = False,
    library: LibraryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Export tags: CSV or JSON of every tag, or XMP sidecars that photo tools read.

    XMP keywords go into `dc:subject`; an existing sidecar is merged, never clobbered, and
    keywords are only ever added.

    Example: `clipsearch tag export xmp --sidecar-style lightroom --dry-run`
    """
    from ..tagging import to_csv, to_json

    with open_library(library, create=False) as lib:
        if fmt is ExportFormat.xmp:
            report = lib.write_xmp(folder or (), sidecar_style.value, dry_run)
        else:
            tags = lib.image_tags(folder or ())
    if fmt is not ExportFormat.xmp:
        text = to_csv(tags) if fmt is ExportFormat.csv else to_json(tags) + "\n"
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text, encoding="utf-8")
            wrote(output)
        return
    show_xmp_report(report, json_out)


@command
def tags(library: LibraryOpt = None, json_out: JsonOpt = False) -> None:
    """Count the images carrying each tag, most common first.

    Example: `clipsearch tags --json`
    """
    with open_library(library, create=False) as lib:
        counts = lib.tags()
    show(json_out, [c.to_dict() for c in counts],
            [f"{c.images}\t{c.label}\t{','.join(c.sources)}" for c in counts], "no tags yet")


classifier_app = typer.Typer(cls=Group, no_args_is_help=True)
app.add_typer(classifier_app, name="classifier")


@classifier_app.callback()
def _classifier() -> None:
    """Few-shot classifiers: a linear probe on the library's vectors, started from the
    zero-shot classifier of the same labels.

    Example: `clipsearch classifier train pets --examples ./examples`
    """


@command(group=classifier_app, name="train")
def classifier_train(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name to save the classifier under.",
                                        show_default=False)],
    examples: Annotated[Path, typer.Option(
        "--examples", "-e", metavar="DIR", help="A folder with one sub-folder of example images per label.",
        show_default=False)],
    labels: Annotated[Optional[str], typer.Option(
        "--labels", "-l", metavar="SET_OR_FILE",
        help="Take the labels' prompts, synonyms and parents from this set or file.",
        show_default=False)] = None,
    template: TemplateOpt = None,
    library: LibraryOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Train a few-shot classifier from example images, one sub-folder per label.

    A logistic regression on the frozen CLIP vectors, started from and pulled toward the
    zero-shot text weights. It is only used when cross-validation shows it beats zero-shot
    beyond chance, so a handful of examples does not do worse than zero-shot. Prints its
    cross-validated accuracy next to zero-shot's on the same examples.

    Example: `clipsearch classifier train pets --examples ./examples`
    """
    with open_library(library, device=device, create=False) as lib:
        report = lib.train_classifier(name, examples, labels, templates=template or ())
    show(json_out, report.to_dict(), [
        f"{report.name}: {len(report.labels)} labels, {report.examples} examples",
        f"cross-validated accuracy {report.cv_accuracy:.3f} ({report.folds} folds), "
        f"zero-shot {report.zero_shot_accuracy:.3f}",
        "the zero-shot weights won: the classifier keeps them" if report.regularisation is None
        else f"regularisation toward zero-shot: {report.regularisation}"])


@command(group=classifier_app, name="list")
def classifier_list(library: LibraryOpt = None, json_out: JsonOpt = False) -> None:
    """List the trained classifiers.

    Example: `clipsearch classifier list`
    """
    with open_library(library, create=False) as lib:
        trained = lib.classifiers()
    show(json_out, [c.to_dict() for c in trained],
            [f"{c.name}\t{len(c.labels)} labels\tcv {c.cv_accuracy:.3f}\tzero-shot {c.zero_shot_accuracy:.3f}"
             for c in trained], "no classifiers yet")


@command(group=classifier_app, name="remove")
def classifier_remove(name: Annotated[str, typer.Argument(metavar="NAME", help="The classifier's name.",
                                                         show_default=False)],
                      library: LibraryOpt = None) -> None:
    """Delete a trained classifier (its tags stay until re-tagged or removed).

    Example: `clipsearch classifier remove pets`
    """
    with open_library(library, create=False) as lib:
        lib.remove_classifier(name)
    stderr().print(f"removed the classifier {name}", markup=False)
