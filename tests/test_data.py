from __future__ import annotations

import subprocess
from pathlib import Path

import polars as pl
import pytest

from tailor import columns as C
from tailor.data import sources as data
from tailor.data.sources import (
    DataError,
    fetch_movielens,
    generate_synthetic,
    load_files,
    load_movielens,
    load_raw,
    read_table,
    render_template,
    template_fields,
)
from tailor.settings import ColumnMap, DataSettings, Settings, SyntheticSettings

# --------------------------------------------------------------------------- templates


def test_template_fields_in_order_each_once() -> None:
    assert template_fields("{title} ({year}). Genres: {genres}. {title}") == [
        "title",
        "year",
        "genres",
    ]
    assert template_fields("no fields, {{literal}} braces") == []


@pytest.mark.parametrize("bad", ["{}", "{0} x", "{title", "{title:>4}", "{title!r}", "{a.b}"])
def test_template_fields_rejects_what_cannot_be_rendered(bad: str) -> None:
    with pytest.raises(DataError, match="template"):
        template_fields(bad)


def test_render_template_nulls_and_empty_brackets() -> None:
    frame = pl.DataFrame(
        {
            "title": ["Toy Story", "Heat", None, "  Spaced   out "],
            "year": ["1995", None, None, "2001"],
        }
    )
    out = render_template(frame, "{title} ({year}). Tags: {year} .")
    assert out.dtype == pl.Utf8
    assert out.to_list() == [
        "Toy Story (1995). Tags: 1995.",
        "Heat. Tags:.",
        ". Tags:.",
        "Spaced out (2001). Tags: 2001.",
    ]


def test_render_template_missing_column_names_it() -> None:
    with pytest.raises(DataError, match="'genres'"):
        render_template(pl.DataFrame({"title": ["a"]}), "{title} {genres}")


# --------------------------------------------------------------------------- files


def _settings(tmp_path: Path, **overrides: object) -> DataSettings:
    fields: dict[str, object] = {
        "source": "files",
        "interactions_path": tmp_path / "events.csv",
        "items_path": tmp_path / "items.parquet",
        "columns": ColumnMap(user_id="uid", item_id="iid", timestamp="ts", weight="rating"),
        "text_template": "{name}. {about}",
        "label_template": "{name}",
    }
    fields.update(overrides)
    return DataSettings(**fields)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "events.csv").write_text(
        "uid,iid,ts,rating,device\nu1,7,100,4,phone\nu1,8,200,,web\nu2,7,2020-01-01,5,\n"
    )
    pl.DataFrame(
        {
            "iid": [7, 8],
            "name": ["Seven", "Eight"],
            "about": ["a number", None],
            "tags": [["x", "y"], None],
        }
    ).write_parquet(tmp_path / "items.parquet")
    return tmp_path


def test_load_files_renames_and_reads_everything_as_text(files: Path) -> None:
    raw = load_files(_settings(files))
    assert raw.interactions.columns == [C.USER_ID, C.ITEM_ID, C.TIMESTAMP, C.WEIGHT, "device"]
    assert raw.items.columns == [C.ITEM_ID, "name", "about", "tags"]
    for frame in (raw.interactions, raw.items):
        assert set(frame.schema.values()) == {pl.Utf8}
    assert raw.interactions.get_column(C.TIMESTAMP).to_list() == ["100", "200", "2020-01-01"]
    assert raw.interactions.get_column(C.WEIGHT).to_list() == ["4", None, "5"]
    assert raw.items.get_column(C.ITEM_ID).to_list() == ["7", "8"]
    # A list in Parquet survives as JSON text rather than being dropped.
    assert raw.items.get_column("tags").to_list() == ['["x","y"]', None]
    assert raw.users is None
    assert raw.sources["interactions"] == str(files / "events.csv")
    assert raw.text_template == "{name}. {about}"
    assert raw.label_template == "{name}"


def test_load_files_without_weight_or_templates(files: Path) -> None:
    settings = _settings(
        files,
        columns=ColumnMap(user_id="uid", item_id="iid", timestamp="ts"),
        text_template=None,
        label_template=None,
        item_vectors_path=files / "vectors.parquet",
    )
    raw = load_files(settings)
    assert C.WEIGHT not in raw.interactions.columns
    # The unmapped rating column is kept under its own name.
    assert "rating" in raw.interactions.columns
    assert raw.text_template == "{item_id}"
    assert raw.label_template == "{item_id}"


def test_load_files_missing_column_names_file_column_and_setting(files: Path) -> None:
    settings = _settings(
        files, columns=ColumnMap(user_id="uid", item_id="iid", timestamp="when", weight="rating")
    )
    with pytest.raises(DataError) as err:
        load_files(settings)
    message = str(err.value)
    assert str(files / "events.csv") in message
    assert "'when'" in message
    assert "data.columns.timestamp" in message
    assert "columns present: uid, iid, ts, rating, device" in message


def test_load_files_missing_file_names_it(files: Path) -> None:
    settings = _settings(files, items_path=files / "nowhere.parquet")
    with pytest.raises(DataError, match=r"items file .*nowhere\.parquet does not exist"):
        load_files(settings)


def test_load_files_template_field_missing_from_items(files: Path) -> None:
    settings = _settings(files, text_template="{name}. {plot}")
    with pytest.raises(DataError) as err:
        load_files(settings)
    assert "'plot'" in str(err.value)
    assert str(files / "items.parquet") in str(err.value)
    assert "data.text_template" in str(err.value)


def test_load_files_refuses_a_rename_onto_an_existing_column(files: Path) -> None:
    (files / "events.csv").write_text("uid,user_id,iid,ts\nu1,x,7,100\n")
    settings = _settings(files, columns=ColumnMap(user_id="uid", item_id="iid", timestamp="ts"))
    with pytest.raises(DataError, match="'user_id'"):
        load_files(settings)


def test_load_files_with_users_tsv(files: Path) -> None:
    (files / "people.tsv").write_text("uid\tage\nu1\t30\nu2\t\n")
    raw = load_files(_settings(files, users_path=files / "people.tsv"))
    assert raw.users is not None
    assert raw.users.to_dict(as_series=False) == {C.USER_ID: ["u1", "u2"], "age": ["30", None]}
    assert raw.sources["users"] == str(files / "people.tsv")


def test_read_table_unknown_suffix_and_unreadable(tmp_path: Path) -> None:
    odd = tmp_path / "events.xlsx"
    odd.write_text("x")
    with pytest.raises(DataError, match=r"events\.xlsx.*unknown suffix"):
        read_table(odd, "interactions")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"interactions file .*broken\.parquet could not be read"):
        read_table(broken, "interactions")


# --------------------------------------------------------------------------- synthetic

SMALL = SyntheticSettings(n_users=300, n_items=400, n_topics=6, events_per_user=20)


def test_generate_synthetic_is_deterministic_per_seed() -> None:
    one, two, other = (generate_synthetic(SMALL, s) for s in (7, 7, 8))
    assert one.interactions.equals(two.interactions)
    assert one.items.equals(two.items)
    assert one.users is not None and two.users is not None
    assert one.users.equals(two.users)
    assert not one.interactions.equals(other.interactions)


def test_generate_synthetic_shapes_and_types() -> None:
    raw = generate_synthetic(SMALL, 1)
    assert raw.items.height == 400
    assert raw.users is not None and raw.users.height == 300
    assert raw.items.columns == [C.ITEM_ID, "title", "description", "topic"]
    assert raw.interactions.columns == [C.USER_ID, C.ITEM_ID, C.TIMESTAMP, C.WEIGHT]
    for frame in (raw.interactions, raw.items, raw.users):
        assert set(frame.schema.values()) == {pl.Utf8}
    assert raw.items.get_column(C.ITEM_ID).is_unique().all()
    assert raw.items.get_column(C.ITEM_ID)[0] == "i0001"
    per_user = raw.interactions.group_by(C.USER_ID).len()
    assert per_user.height == 300
    assert per_user.get_column("len").min() >= 3
    assert set(raw.interactions.get_column(C.WEIGHT).unique()) == {"1"}
    increasing = raw.interactions.select(
        (pl.col(C.TIMESTAMP).cast(pl.Int64).diff().over(C.USER_ID).fill_null(1) > 0).all()
    ).item()
    assert increasing
    assert raw.text_template == "{title}. {description}"
    assert render_template(raw.items.head(1), raw.text_template)[0].count(".") >= 2


def test_generate_synthetic_popularity_is_skewed() -> None:
    raw = generate_synthetic(SMALL, 3)
    counts = raw.interactions.group_by(C.ITEM_ID).len().get_column("len").sort(descending=True)
    top = counts.head(int(0.2 * SMALL.n_items)).sum()
    assert top / raw.interactions.height > 0.35


def test_generate_synthetic_users_stay_in_their_topics() -> None:
    raw = generate_synthetic(SMALL, 5)
    assert raw.users is not None
    joined = raw.interactions.join(raw.items.select(C.ITEM_ID, "topic"), on=C.ITEM_ID).join(
        raw.users, on=C.USER_ID
    )
    inside = joined.select(
        pl.struct("topic", "interests")
        .map_elements(lambda r: r["topic"] in r["interests"].split(", "), return_dtype=pl.Boolean)
        .mean()
    ).item()
    assert inside > 0.85


def test_generate_synthetic_cycles_topics_beyond_the_vocabulary() -> None:
    raw = generate_synthetic(SyntheticSettings(n_users=20, n_items=40, n_topics=9), 0)
    topics = set(raw.items.get_column("topic"))
    assert len(topics) == 9
    assert "space 2" in topics


# --------------------------------------------------------------------------- dispatch


def test_load_raw_applies_template_overrides(tmp_path: Path) -> None:
    settings = Settings(
        workdir=tmp_path,
        data=DataSettings(
            source="synthetic",
            synthetic=SyntheticSettings(n_users=5, n_items=10),
            label_template="{topic}: {title}",
        ),
    )
    raw = load_raw(settings)
    assert raw.label_template == "{topic}: {title}"
    assert raw.text_template == "{title}. {description}"

    bad = settings.model_copy(
        update={"data": settings.data.model_copy(update={"text_template": "{plot}"})}
    )
    with pytest.raises(DataError, match="'plot'"):
        load_raw(bad)


# --------------------------------------------------------------------------- MovieLens


def test_fetch_movielens_uses_the_cached_wheel(tmp_path: Path, monkeypatch) -> None:
    wheel = tmp_path / "downloads" / "recbole-1.2.1-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"cached")

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(data.subprocess, "run", no_pip)
    assert fetch_movielens(tmp_path) == wheel


def test_fetch_movielens_reports_pip_failure(tmp_path: Path, monkeypatch) -> None:
    def failing_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        assert "download" in cmd and data.MOVIELENS_WHEEL in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(data.subprocess, "run", failing_pip)
    with pytest.raises(DataError, match="No matching distribution found"):
        fetch_movielens(tmp_path)
    # No partial download is left behind for the next run to trip over.
    assert list((tmp_path / "downloads").iterdir()) == []


@pytest.mark.realdata
def test_load_movielens_from_pypi(tmp_path: Path) -> None:
    raw = load_movielens(tmp_path)
    assert raw.interactions.height == 100_000
    assert raw.items.height == 1682
    assert raw.users is not None and raw.users.height == 943
    assert raw.interactions.columns == [C.USER_ID, C.ITEM_ID, C.WEIGHT, C.TIMESTAMP]
    assert raw.items.columns == [C.ITEM_ID, "title", "year", "genres"]
    toy = raw.items.filter(pl.col(C.ITEM_ID) == "1").row(0, named=True)
    assert toy == {
        C.ITEM_ID: "1",
        "title": "Toy Story",
        "year": "1995",
        "genres": "Animation, Children's, Comedy",
    }
    assert render_template(raw.items.head(1), raw.label_template)[0] == "Toy Story (1995)"
