"""The terminal chat (`conva-mlx chat`): driven headless with App.run_test() and Pilot."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Label

from conva_mlx import CHAT_SAMPLING
from conva_mlx.extraction import ExtractOptions, extract_pack
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import Pack
from conva_mlx.packs.save import save_pack
from tui.app import ChatApp
from tui.presets import list_presets, load_preset, save_preset
from tui.screens import HelpScreen
from tui.settings import ChatSettings, panel_groups
from tui.store import find_pack, packs_dir, remember_pack
from tui.transcript import Turn, history, to_markdown
from tui.widgets import ReplyView, Stepper, TurnView, ValueRow

SIZE = (120, 40)
VALUE_QUESTION = "My coworker is struggling with a deadline. Should I help her?"


@pytest.fixture(scope="module")
def pack(request: pytest.FixtureRequest, default_lm: LoadedModel) -> Pack:
    """The lead's `small_pack` fixture when present, else a two-value pack built here."""
    try:
        return request.getfixturevalue("small_pack")
    except pytest.FixtureLookupError:
        return extract_pack(default_lm, ["benevolence", "power"],
                            opts=ExtractOptions(with_uncontrolled=False), show_progress=False)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def make_app(lm: LoadedModel, pack: Pack | None, tmp_path: Path, max_tokens: int = 400,
             **kw: Any) -> ChatApp:
    """The app with the chat's default decoding, replies cut at `max_tokens`."""
    opts = dataclasses.replace(CHAT_SAMPLING, max_tokens=max_tokens)
    return ChatApp(lm=lm, pack=pack, state_dir=tmp_path / "state", opts=opts, **kw)


async def until(pilot: Pilot[None], cond: Callable[[], bool], timeout: float = 120) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await pilot.pause(0.05)


async def send(pilot: Pilot[None], text: str) -> None:
    app = pilot.app
    app.query_one("#prompt").focus()
    await pilot.press(*text)
    await pilot.press("enter")
    await until(pilot, lambda: app.busy is None)  # type: ignore[attr-defined]


# ----- the chat, end to end ---------------------------------------------------------------


def test_toggling_a_value_setting_strength_and_chatting_streams_a_steered_reply(
        default_lm: LoadedModel, pack: Pack, tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(default_lm, pack, tmp_path, max_tokens=16)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            row = app.query_one("#value-benevolence", ValueRow)
            row.focus()
            await pilot.press("space")  # off -> toward
            await pilot.press("right", "right", "left")  # keyboard: 0.95 -> 0.96
            await pilot.click("#value-benevolence Stepper .inc")  # mouse: -> 0.97
            await pilot.pause()
            setting = app.settings.values["benevolence"]
            assert setting.stance == "toward"
            assert setting.p0 == pytest.approx(0.97)
            assert str(row.query_one(Stepper).query_one(".num", Label).content) == "0.97"
            await pilot.press("ctrl+g")  # gate off: always steer, whatever the query
            assert app.settings.gate is False

            pieces: list[str] = []
            stream = app._stream

            def counting(reply: ReplyView, piece: str) -> None:
                pieces.append(piece)
                stream(reply, piece)

            app._stream = counting  # type: ignore[method-assign]
            await send(pilot, VALUE_QUESTION)
            turn = app.turns[-1]
            assert len(pieces) > 1 and "".join(pieces) == turn.reply != ""
            assert "benevolence↑" in turn.summary and "calibrated" in turn.summary
            assert "gate off" in turn.summary
            assert "benevolence ↑ 0.97" in turn.settings
            view = app.query_one(TurnView)
            assert view.steered.text == turn.reply
            assert view.steered.diag == turn.summary

            # a second turn carries the first in its history
            await send(pilot, "Thanks. Anything else?")
            assert len(app.turns) == 2 and history(app.turns)[:2][0]["content"] == VALUE_QUESTION
            await pilot.press("ctrl+s")
            saved = list((tmp_path / "state" / "transcripts").glob("*.md"))
            assert len(saved) == 1 and "benevolence ↑ 0.97" in saved[0].read_text()
            await pilot.press("ctrl+l")
            assert app.turns == [] and not app.query(TurnView)
    run(scenario())


def test_compare_view_shows_the_unsteered_reply_beside_the_steered_one(
        default_lm: LoadedModel, pack: Pack, tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(default_lm, pack, tmp_path, max_tokens=12)
        app.settings.values["power"].stance = "away"
        app.settings.gate = False
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+o")
            assert app.settings.compare
            await send(pilot, VALUE_QUESTION)
            turn = app.turns[-1]
            view = app.query_one(TurnView)
            assert len(view.query(ReplyView)) == 2
            assert view.steered.text == turn.reply and view.unsteered.text == turn.unsteered
            assert turn.unsteered and "none: no change" in turn.unsteered_summary
            assert "power↓" in turn.summary
            assert "unsteered (method none)" in to_markdown(app.turns, "m", "p")
    run(scenario())


def test_escape_stops_a_long_generation(default_lm: LoadedModel, pack: Pack,
                                        tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(default_lm, pack, tmp_path, max_tokens=400)
        async with app.run_test(size=SIZE) as pilot:
            app.query_one("#prompt").focus()
            await pilot.press(*"Write a very long story about a dragon.", "enter")
            await until(pilot, lambda: bool(app.query(TurnView))
                        and len(app.query_one(TurnView).steered.text) > 0)
            assert app.busy == "generating"
            await pilot.press("escape")
            await until(pilot, lambda: app.busy is None, timeout=20)
            turn = app.turns[-1]
            assert turn.stopped and 0 < len(turn.reply) < 800
            assert app.query_one(TurnView).steered.diag.endswith("stopped")
    run(scenario())


def test_help_screen_opens_and_closes(default_lm: LoadedModel, pack: Pack,
                                      tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(default_lm, pack, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("f1")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
            await pilot.press("f1")
            await pilot.click("#close")
            assert not isinstance(app.screen, HelpScreen)
    run(scenario())


def test_a_pack_for_another_model_is_an_error_notification_not_a_crash(
        default_lm: LoadedModel, pack: Pack, tmp_path: Path) -> None:
    other = dataclasses.replace(pack, model=dataclasses.replace(pack.model,
                                                                fingerprint="0123456789abcdef"))

    async def scenario() -> None:
        app = make_app(default_lm, other, tmp_path, max_tokens=8)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            errors = [n for n in app._notifications if n.severity == "error"]
            assert errors and "0123456789abcdef" in errors[0].message
            assert app.session is not None and app.session.pack is None  # plain chat, no pack
            assert all(r.disabled for r in app.query(ValueRow))
            await send(pilot, "Hi")  # still chats, unsteered
            assert app.turns[-1].reply
    run(scenario())


def test_the_last_pack_for_a_model_is_found_on_the_next_start(
        default_lm: LoadedModel, pack: Pack, tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert find_pack(state, default_lm.fingerprint) is None
    pack_dir = save_pack(pack, tmp_path / "mypack")
    remember_pack(state, default_lm.fingerprint, pack_dir)
    assert find_pack(state, default_lm.fingerprint) == pack_dir.resolve()

    async def scenario() -> None:
        app = ChatApp(lm=default_lm, state_dir=state)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.session is not None and app.session.pack is not None
                        and bool(app.session.pack.values),
                        timeout=30)
            assert not app.query_one("#value-benevolence", ValueRow).disabled
            assert app.query_one("#value-security", ValueRow).disabled
    run(scenario())


def test_without_a_pack_the_app_offers_to_extract_or_open_one(
        default_lm: LoadedModel, tmp_path: Path) -> None:
    async def scenario() -> None:
        app = ChatApp(lm=default_lm, state_dir=tmp_path / "state")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert type(app.screen).__name__ == "PackScreen"
            app.screen.query_one("#pack-path", Input).value = str(tmp_path / "missing")
            await pilot.click("#open")
            await until(pilot, lambda: any(n.severity == "error" for n in app._notifications),
                        timeout=10)
    run(scenario())
    assert packs_dir(tmp_path, "abc") == tmp_path / "packs" / "abc"


# ----- small parts ------------------------------------------------------------------------


def test_panel_shows_each_of_the_ten_values_once() -> None:
    names = [n for _, group in panel_groups() for n in group]
    assert len(names) == 10 and len(set(names)) == 10
    assert dict(panel_groups())["openness to change"][-1] == "hedonism"


def test_presets_round_trip(tmp_path: Path) -> None:
    s = ChatSettings()
    s.values["benevolence"].stance = "toward"
    s.values["benevolence"].p0 = 0.97
    s.values["power"].stance = "away"
    s.mode = "token"
    s.instruct = True
    save_preset(tmp_path, "kind", s.to_json())
    assert list_presets(tmp_path) == ["kind"]
    t = ChatSettings()
    t.apply_json(load_preset(tmp_path, "kind"))
    assert t.to_json() == s.to_json()
    assert [(x.value, x.p0, x.away) for x in t.targets()] == [("power", 0.95, True),
                                                              ("benevolence", 0.97, False)]
    assert t.steer_config().method == "calibrated" and t.steer_config().instruct
    assert "with the instruction" in t.describe()
    assert ChatSettings().steer_config().method == "none"
    t.values["benevolence"].stance = t.values["power"].stance = "off"
    assert t.steer_config().method == "none" and not t.steer_config().instruct
    older = load_preset(tmp_path, "kind")
    del older["instruct"]  # a preset saved before the instruction existed keeps the setting
    t.instruct = False
    t.apply_json(older)
    assert t.instruct is False


def test_the_instruction_toggle_joins_ica_to_the_push(default_lm: LoadedModel, pack: Pack,
                                                      tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(default_lm, pack, tmp_path, max_tokens=6)
        app.settings.values["benevolence"].stance = "toward"
        app.settings.gate = False
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+n")
            assert app.settings.instruct
            await send(pilot, VALUE_QUESTION)
            turn = app.turns[-1]
            assert "with the instruction" in turn.settings
            assert "with the instruction" in turn.summary
            await pilot.press("ctrl+n")
            assert not app.settings.instruct
    run(scenario())


def test_transcript_records_the_settings_of_every_turn() -> None:
    turns = [Turn("hi", "benevolence ↑ 0.95 · mode prompt · gate on", "hello", "gate 0.9 open")]
    md = to_markdown(turns, "model-x", "pack-y")
    assert "model-x" in md and "benevolence ↑ 0.95" in md and "`gate 0.9 open`" in md
    assert history(turns) == [{"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "hello"}]


# ----- snapshots ----------------------------------------------------------------------------

SnapCompare = Callable[..., bool]


def _snapshot_app(lm: LoadedModel, pack: Pack, tmp_path: Path) -> ChatApp:
    app = make_app(lm, pack, tmp_path)
    app.settings.values["benevolence"].stance = "toward"
    app.settings.values["benevolence"].p0 = 0.97
    app.settings.values["power"].stance = "away"
    return app


async def _no_blink(pilot: Pilot[None]) -> None:
    pilot.app.query_one("#prompt", Input).cursor_blink = False  # no timing-dependent pixels
    await pilot.pause()


def test_snapshot_main_screen(snap_compare: SnapCompare, default_lm: LoadedModel, pack: Pack,
                              tmp_path: Path) -> None:
    assert snap_compare(_snapshot_app(default_lm, pack, tmp_path), terminal_size=SIZE,
                        run_before=_no_blink)


def test_snapshot_help_screen(snap_compare: SnapCompare, default_lm: LoadedModel, pack: Pack,
                              tmp_path: Path) -> None:
    async def open_help(pilot: Pilot[None]) -> None:
        await _no_blink(pilot)
        await pilot.press("f1")

    run_before: Callable[[Pilot[None]], Awaitable[None]] = open_help
    assert snap_compare(_snapshot_app(default_lm, pack, tmp_path), terminal_size=SIZE,
                        run_before=run_before)


def test_a_message_sent_while_the_model_loads_is_sent_once_it_is_ready(
        default_lm: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import tui.app

    release = threading.Event()

    def slow_load(spec: str, dtype: str) -> LoadedModel:
        release.wait(30)
        return default_lm

    monkeypatch.setattr(tui.app, "load_model", slow_load)

    async def scenario() -> None:
        app = ChatApp(model_spec="default", state_dir=tmp_path / "state",
                      opts=dataclasses.replace(CHAT_SAMPLING, max_tokens=4))
        async with app.run_test(size=SIZE) as pilot:
            app.query_one("#prompt").focus()
            await pilot.press(*"What is 2+2?")
            await pilot.press("enter")
            await pilot.pause()
            assert app.session is None and app.pending_message == "What is 2+2?"
            assert app.query_one("#prompt", Input).value == ""  # taken, not left behind
            release.set()
            await until(pilot, lambda: bool(app.turns) and app.busy is None, timeout=60)
            assert app.turns[0].user == "What is 2+2?" and app.turns[0].reply
            assert app.pending_message is None
    run(scenario())
