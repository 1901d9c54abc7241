"""``clipsearch album``: saved searches whose members follow the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (
    DeviceOpt, FolderOpt, Group, JsonOpt, LibraryOpt, SidecarStyle, SidecarStyleOpt, app, command, open_library,
    show, show_xmp_report, skipping, stderr,
)
from .searching import (
    AfterOpt, AlsoOpt, BeforeOpt, ExcludeOpt, ExtOpt, ImageOpt, IncludeQueryOpt, MinScoreOpt, NoTagOpt,
    PathsOnlyOpt, SortOpt, SortOrder, TagOpt, TextArg, build_query,
)

album_app = typer.Typer(cls=Group, no_args_is_help=True)
app.add_typer(album_app, name="album")

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The album's name.", show_default=False)]
ImagesArg = Annotated[list[str], typer.Argument(metavar="IMAGE...", help="Indexed images: paths or id:N.",
                                                show_default=False)]


@album_app.callback()
def _album() -> None:
    """Albums: saved searches whose members follow the library as it changes. Images
    you pin stay in, images you remove stay out.

    Example: `clipsearch album create beach "a sunny beach" --min-score 0.25`
    """


def _summary(album) -> str:
    return f"{album.name}\t{len(album.members)} images\t{album.query}"


@command(group=album_app, name="create")
def album_create(
    name: NameArg,
    text: TextArg = None,
    image: ImageOpt = None,
    also: AlsoOpt = None,
    exclude: ExcludeOpt = None,
    folder: FolderOpt = None,
    ext: ExtOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    tag: TagOpt = None,
    no_tag: NoTagOpt = None,
    min_score: MinScoreOpt = None,
    sort: SortOpt = SortOrder.score,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1,
                                       help="Members the search gives at most (pinned images besides).")] = 100,
    include_query: IncludeQueryOpt = False,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Save over an album of this name (its pins and removals stay).")] = False,
    library: LibraryOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Save a search as an album: any of search's terms and filters, and --min-score.

    The album keeps the query's vector, so its members are worked out again, without the
    model, each time it is read: images indexed later join it, deleted ones leave it.

    Example: `clipsearch album create sunsets "a sunset" --and ./sunset.jpg --in ~/Photos --min-score 0.2`
    """
    query = build_query(text, image, also, exclude)
    with open_library(library, device=device, create=False) as lib:
        album = lib.albums.create(name, query, limit=limit, min_score=min_score, folders=folder or (),
                                  extensions=ext or (), after=after, before=before, tags=tag or (),
                                  no_tags=no_tag or (), sort=sort.value, include_query_images=include_query,
                                  replace=replace)
    show(json_out, album.to_dict(), [_summary(album)])


@command(group=album_app, name="list")
def album_list(library: LibraryOpt = None, json_out: JsonOpt = False) -> None:
    """List the albums: name, how many images each holds now, and its search.

    Example: `clipsearch album list`
    """
    with open_library(library, create=False) as lib:
        albums = lib.albums.all()
    show(json_out, [{**a.to_dict(), "members": len(a.members)} for a in albums], [_summary(a) for a in albums],
         "no albums yet")


@command(group=album_app, name="show")
def album_show(name: NameArg, library: LibraryOpt = None, paths_only: PathsOnlyOpt = False,
               json_out: JsonOpt = False) -> None:
    """Print an album's images as they are now: score and path, "pinned" after those kept
    in by hand.

    Example: `clipsearch album show red -f`
    """
    with open_library(library, create=False) as lib:
        album = lib.albums.get(name)
    lines = [m.path if paths_only else f"{m.score:.4f}\t{m.path}" + ("\tpinned" if m.pinned else "")
             for m in album.members]
    show(json_out, album.to_dict(), lines, f"the album {name} is empty")


def _decided(verb: str, album, count: int) -> None:
    stderr().print(f"{verb} {count} image{'s' * (count != 1)}: {album.name} holds {len(album.members)} now",
                   markup=False)


@command(group=album_app, name="pin")
def album_pin(name: NameArg, images: ImagesArg, library: LibraryOpt = None) -> None:
    """Keep images in an album whatever its search says.

    Example: `clipsearch album pin red id:1`
    """
    with open_library(library, create=False) as lib:
        _decided("pinned", lib.albums.pin(name, images), len(images))


@command(group=album_app, name="remove")
def album_remove(name: NameArg, images: ImagesArg, library: LibraryOpt = None) -> None:
    """Take images out of an album for good: its search does not bring them back.

    Example: `clipsearch album remove red id:2`
    """
    with open_library(library, create=False) as lib:
        _decided("removed", lib.albums.remove(name, images), len(images))


@command(group=album_app, name="reset")
def album_reset(name: NameArg, images: ImagesArg, library: LibraryOpt = None) -> None:
    """Undo pins and removals: the album's search decides about these images again.

    Example: `clipsearch album reset red id:1 id:2`
    """
    with open_library(library, create=False) as lib:
        _decided("reset", lib.albums.reset(name, images), len(images))


@command(group=album_app, name="export")
def album_export(
    name: NameArg,
    to: Annotated[Optional[Path], typer.Option(
        "--to", metavar="DIR", help="Make or update a folder of links to the album's images.",
        show_default=False)] = None,
    xmp: Annotated[bool, typer.Option("--xmp", help="Add the album's name as a keyword to each image's XMP "
                                                    "sidecar.")] = False,
    sidecar_style: SidecarStyleOpt = SidecarStyle.default,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --xmp: report what would change; write "
                                                            "nothing.")] = False,
    library: LibraryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Export an album: a folder of symbolic links, or XMP keywords beside the images.

    Exporting to the same folder again brings it up to date: links to images that left
    the album are taken away; other files there are never touched.

    Example: `clipsearch album export red --to ./red-album`
    """
    if (to is None) == (not xmp):
        raise typer.BadParameter("give --to DIR or --xmp", param_hint="--to")
    with open_library(library, create=False) as lib:
        if xmp:
            report = lib.albums.write_xmp(name, sidecar_style.value, dry_run)
        else:
            report = lib.albums.export(name, to)
    if xmp:
        show_xmp_report(report, json_out)
        return
    for e in report.errors:
        skipping(e.path, e.reason)
    show(json_out, report.to_dict(), [f"{report.folder}: linked {report.linked}, kept {report.kept}, "
                                      f"unlinked {report.unlinked}, {len(report.errors)} not linked"])


@command(group=album_app, name="delete")
def album_delete(name: NameArg, library: LibraryOpt = None) -> None:
    """Delete an album (the images stay where they are).

    Example: `clipsearch album delete red`
    """
    with open_library(library, create=False) as lib:
        lib.albums.delete(name)
    stderr().print(f"deleted the album {name}", markup=False)
