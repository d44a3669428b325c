"""The chat app: values panel, streamed steered chat, compare view, presets, transcript."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, LoadingIndicator, Static

from conva_mlx import (
    CHAT_SAMPLING,
    ConvaError,
    GenOptions,
    LoadedModel,
    Pack,
    SteerConfig,
    SteeringSession,
    extract,
    load_model,
    open_pack,
    parse_values,
    resolve_pack_path,
    save_pack,
)
from conva_mlx.fsutil import atomic_write_text, cache_dir

from .presets import list_presets, load_preset, save_preset
from .screens import ExtractScreen, HelpScreen, PackScreen, PresetScreen, binding_rows
from .settings import ChatSettings
from .store import find_pack, packs_dir, remember_pack
from .transcript import Turn, history, to_markdown
from .widgets import ReplyView, StatusBar, TurnView, ValuePanel, ValueRow

HELP = {
    "help": "This help",
    "stop": "Stop the reply being generated",
    "toggle_gate": "Gate on/off (on: steer only value-related messages)",
    "toggle_instruct": "Instruction on/off (on: ICA's instruction too, where the gate opens)",
    "toggle_mode": "Mode prompt/token (token: recompute the perturbation every token)",
    "toggle_compare": "Compare: show the unsteered reply beside the steered one",
    "clear": "Clear the chat (history included)",
    "save_transcript": "Save the transcript as Markdown (with settings per turn)",
    "copy_transcript": "Copy the transcript to the clipboard",
    "save_preset": "Save the chosen values and strengths as a preset",
    "load_preset": "Load a preset",
    "choose_pack": "Extract a pack for this model, or open another pack",
    "quit": "Quit",
}
WELCOME = "Type a message and press Enter. Pick values on the left. F1: all key bindings."


class ChatApp(App[None]):
    """Chat with a local model, steered toward (or away from) human values."""

    CSS_PATH = "chat.tcss"
    TITLE = "conva-mlx chat"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1", "help", "Help", key_display="F1"),
        Binding("escape", "stop", "Stop", key_display="Esc"),
        Binding("ctrl+g", "toggle_gate", "Gate"),
        Binding("ctrl+n", "toggle_instruct", "Instruct"),
        Binding("ctrl+t", "toggle_mode", "Mode"),
        Binding("ctrl+o", "toggle_compare", "Compare"),
        Binding("ctrl+l", "clear", "Clear"),
        Binding("ctrl+s", "save_transcript", "Save"),
        Binding("ctrl+y", "copy_transcript", "Copy"),
        Binding("f5", "save_preset", "Save preset", show=False, key_display="F5"),
        Binding("f6", "load_preset", "Load preset", show=False, key_display="F6"),
        Binding("f7", "choose_pack", "Extract / open pack", show=False, key_display="F7"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(
        self,
        model_spec: str = "default",
        dtype: str = "auto",
        pack_spec: str | None = None,
        *,
        lm: LoadedModel | None = None,
        pack: Pack | None = None,
        state_dir: Path | None = None,
        opts: GenOptions | None = None,
    ) -> None:
        super().__init__()
        self.model_spec, self.dtype, self.pack_spec = model_spec, dtype, pack_spec
        self.lm = lm
        self._initial_pack = pack
        self.state_dir = state_dir or cache_dir()
        self.opts = opts or CHAT_SAMPLING
        self.settings = ChatSettings()
        self.session: SteeringSession | None = None
        self.pack_label = "none"
        self.turns: list[Turn] = []
        self.busy: str | None = None  # "generating" / "extracting" while MLX works
        self._stop = threading.Event()
        self.load_error: str | None = None
        self.pending_message: str | None = None  # typed while the model was loading

    # ----- layout -------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            yield ValuePanel(self.settings, id="values")
            with Vertical(id="chat-area"):
                yield StatusBar(id="status", markup=False)
                with VerticalScroll(id="chat"):
                    yield Static(WELCOME, id="welcome")
                yield LoadingIndicator(id="loading")
                yield Input(placeholder="Message (Enter to send)", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(ValuePanel).set_available(set())
        self.query_one("#prompt", Input).focus()
        if self.lm is None:
            self.query_one("#welcome", Static).update(f"Loading model '{self.model_spec}'…")
            self._refresh_status()
            self._load_model()
        else:
            self.query_one("#loading").display = False
            self._model_ready(self.lm)

    def _refresh_status(self) -> None:
        model = self.lm.model_id if self.lm else f"{self.model_spec} (loading)"
        pack = self.session.pack if self.session else None
        gate_note = "" if pack is None or pack.gate else " (pack has none)"
        line = (f"model {model} · pack {self.pack_label} · {self.settings.describe()}{gate_note}"
                f" · compare {'on' if self.settings.compare else 'off'}")
        self.query_one(StatusBar).update(line)

    # ----- model and pack -------------------------------------------------------------
    @work(thread=True, exit_on_error=False, group="mlx")
    def _load_model(self) -> None:
        try:
            lm = load_model(self.model_spec, self.dtype)
        except Exception as exc:
            message = str(exc) if isinstance(exc, ConvaError) else (
                f"could not load the model: {type(exc).__name__}: {exc}")
            self.call_from_thread(self._load_failed, message)
            return
        self.call_from_thread(self._model_ready, lm)

    def _load_failed(self, message: str) -> None:
        self.load_error = message
        if self.pending_message is not None:  # give the typed message back, unsent
            self.query_one("#prompt", Input).value = self.pending_message
            self.pending_message = None
        self.query_one("#loading").display = False
        self.query_one("#welcome", Static).update(f"{message}\n\nQuit with Ctrl+Q and start "
                                                  "again with another --model.")
        self._error(message)

    def _model_ready(self, lm: LoadedModel) -> None:
        self.lm = lm
        self.query_one("#loading").display = False
        self.query_one("#welcome", Static).update(WELCOME)
        self.session = SteeringSession(lm)  # plain chat until a pack is chosen
        if self._initial_pack is not None:
            self.use_pack(self._initial_pack, None, "given")
        elif self.pack_spec:
            self._open_pack(self.pack_spec)
        elif (found := find_pack(self.state_dir, lm.fingerprint)) is not None:
            self._open_pack(str(found))
        else:
            self.action_choose_pack("No pack exists yet for this model. Extract one (a few "
                                    "minutes for all 10 values on a laptop CPU) or open one.")
        self._refresh_status()
        if self.pending_message is not None:
            text, self.pending_message = self.pending_message, None
            self._submit(text)

    def use_pack(self, pack: Pack, path: Path | None, label: str | None = None) -> bool:
        """Steer with `pack`; a pack for another model is an error (the old one stays)."""
        assert self.lm is not None
        try:
            session = SteeringSession(self.lm, pack)
        except ConvaError as exc:
            self._error(str(exc))
            return False
        self.session = session
        self.pack_label = label or (str(path) if path else "loaded")
        if path is not None:
            try:
                remember_pack(self.state_dir, self.lm.fingerprint, path)
            except OSError as exc:
                self.notify(f"could not remember the pack: {exc}", severity="warning")
        # the pack's default: instruction + push where its calibration was measured with it
        cal = pack.calibration
        self.settings.instruct = cal is not None and cal.instruct
        if cal is not None:
            self.settings.use_levels({v: c.effect_at(cal.strength, cal.instruct)
                                      for v, c in cal.values.items()})
        for name, setting in self.settings.values.items():
            if name not in pack.values:
                setting.stance = "off"
        panel = self.query_one(ValuePanel)
        panel.set_available(set(pack.values))
        panel.sync()
        self._refresh_status()
        return True

    @work(thread=True, exit_on_error=False, group="io")
    def _open_pack(self, spec: str) -> None:
        try:
            path = resolve_pack_path(spec)
            pack = open_pack(str(path))
        except ConvaError as exc:
            self.call_from_thread(self._error, str(exc))
            return
        except Exception as exc:
            self.call_from_thread(self._error, f"could not open pack {spec}: {exc}")
            return
        self.call_from_thread(self.use_pack, pack, path)

    def action_choose_pack(self, reason: str = "Choose the vector pack to steer with.") -> None:
        if self.lm is None:
            self.notify("the model is still loading", severity="warning")
            return
        self.push_screen(PackScreen(self.lm.model_id, reason), self._pack_chosen)

    def _pack_chosen(self, choice: tuple[str, str] | None) -> None:
        if choice is None:
            return
        kind, arg = choice
        if kind == "open":
            self._open_pack(arg)
            return
        if self.busy:
            self.notify(f"wait: {self.busy}", severity="warning")
            return
        try:
            values = parse_values(arg or "all")
        except ConvaError as exc:
            self._error(str(exc))
            return
        screen = ExtractScreen()
        self.push_screen(screen)
        self.busy = "extracting"
        self._extract(values, screen)

    @work(thread=True, exit_on_error=False, group="mlx")
    def _extract(self, values: list[str], screen: ExtractScreen) -> None:
        assert self.lm is not None
        out = packs_dir(self.state_dir, self.lm.fingerprint)
        try:
            pack = extract(self.lm, values,
                           on_stage=lambda n, d, t: self.call_from_thread(screen.stage, n, d, t))
            save_pack(pack, out, overwrite=True)  # the app's own pack folder for this model
        except Exception as exc:
            self.call_from_thread(self._extract_done, screen, None, f"extraction failed: {exc}")
            return
        self.call_from_thread(self._extract_done, screen, pack, out)

    def _extract_done(self, screen: ExtractScreen, pack: Pack | None,
                      out: Path | str) -> None:
        self.busy = None
        screen.dismiss(None)
        if pack is None:
            self._error(str(out))
            return
        if self.use_pack(pack, Path(out)):
            self.notify(f"pack saved to {out}")

    # ----- chat -------------------------------------------------------------------------
    @on(Input.Submitted, "#prompt")
    def send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.load_error:
            self.notify(self.load_error, severity="error")
            return
        if self.session is None:
            # Keep the message and send it the moment the model is ready.
            event.input.clear()
            self.pending_message = text
            self.query_one("#welcome", Static).update(
                f"Loading model '{self.model_spec}'…\n\nYour message will be sent when the "
                f"model is ready:\n> {text}")
            self.notify("the model is still loading: your message will be sent when it is "
                        "ready")
            return
        if self.busy:
            self.notify(f"wait: {self.busy} (Esc stops a reply)", severity="warning")
            return
        event.input.clear()
        self._submit(text)

    def _submit(self, text: str) -> None:
        assert self.session is not None
        cfg = self.settings.steer_config()
        if self.session.pack is None or self.session.pack.gate is None:
            cfg.gate = False
        turn = Turn(text, self.settings.describe())
        messages = [*history(self.turns), {"role": "user", "content": text}]
        self.turns.append(turn)
        view = TurnView(text, turn.settings, self.settings.compare)
        self.query_one("#welcome").display = False
        chat = self.query_one("#chat", VerticalScroll)
        chat.mount(view)
        chat.scroll_end(animate=False)
        self.busy = "generating"
        self._stop.clear()
        self._generate(turn, view, messages, cfg, self.settings.compare)

    @work(thread=True, exit_on_error=False, group="mlx")
    def _generate(self, turn: Turn, view: TurnView, messages: list[dict[str, str]],
                  cfg: SteerConfig, compare: bool) -> None:
        session = self.session
        assert session is not None
        try:
            result = session.generate(messages, cfg, self.opts,
                                      on_text=lambda s: self.call_from_thread(self._stream,
                                                                              view.steered, s),
                                      should_stop=self._stop.is_set)
            turn.reply, turn.summary = result.text, result.summary()
            turn.stopped = self._stop.is_set()
            self.call_from_thread(view.steered.finish, turn.summary, turn.stopped)
            if compare and not turn.stopped:
                plain = session.generate(messages, SteerConfig(method="none", gate=False),
                                         self.opts,
                                         on_text=lambda s: self.call_from_thread(
                                             self._stream, view.unsteered, s),
                                         should_stop=self._stop.is_set)
                turn.unsteered, turn.unsteered_summary = plain.text, plain.summary()
                self.call_from_thread(view.unsteered.finish, turn.unsteered_summary,
                                      self._stop.is_set())
        except Exception as exc:
            message = str(exc) if isinstance(exc, ConvaError) else (
                f"generation failed: {type(exc).__name__}: {exc}")
            self.call_from_thread(self._generation_failed, turn, view, message)
        finally:
            self.call_from_thread(self._generation_done)

    def _stream(self, reply: ReplyView, piece: str) -> None:
        reply.append(piece)
        self.query_one("#chat", VerticalScroll).scroll_end(animate=False)

    def _generation_failed(self, turn: Turn, view: TurnView, message: str) -> None:
        if turn in self.turns and not turn.reply:
            self.turns.remove(turn)  # keep the history clean for the next message
        view.steered.fail(message)
        self._error(message)

    def _generation_done(self) -> None:
        self.busy = None
        self.query_one("#chat", VerticalScroll).scroll_end(animate=False)

    def _error(self, message: str) -> None:
        self.notify(message, severity="error", timeout=8)

    # ----- actions ------------------------------------------------------------------------
    def action_stop(self) -> None:
        if self.busy == "generating":
            self._stop.set()

    def action_toggle_gate(self) -> None:
        self.settings.gate = not self.settings.gate
        self._refresh_status()

    def action_toggle_instruct(self) -> None:
        self.settings.instruct = not self.settings.instruct
        self._refresh_status()

    def action_toggle_mode(self) -> None:
        self.settings.mode = "token" if self.settings.mode == "prompt" else "prompt"
        self._refresh_status()

    def action_toggle_compare(self) -> None:
        self.settings.compare = not self.settings.compare
        self._refresh_status()

    def action_clear(self) -> None:
        if self.busy == "generating":
            self.notify("stop the reply first (Esc)", severity="warning")
            return
        self.turns.clear()
        self.query(TurnView).remove()
        self.query_one("#welcome").display = True

    def transcript(self) -> str:
        model = self.lm.model_id if self.lm else self.model_spec
        return to_markdown(self.turns, model, self.pack_label)

    def action_copy_transcript(self) -> None:
        self.copy_to_clipboard(self.transcript())
        self.notify("transcript copied to the clipboard")

    def action_save_transcript(self) -> None:
        path = self.state_dir / "transcripts" / f"chat-{time.strftime('%Y%m%d-%H%M%S')}.md"
        try:
            atomic_write_text(path, self.transcript())
        except OSError as exc:
            self._error(f"could not save the transcript: {exc}")
            return
        self.notify(f"transcript saved to {path}")

    def action_save_preset(self) -> None:
        self.push_screen(PresetScreen(True, []), self._preset_named)

    def _preset_named(self, name: str | None) -> None:
        if not name:
            return
        try:
            path = save_preset(self.state_dir, name, self.settings.to_json())
        except (ConvaError, OSError) as exc:
            self._error(str(exc))
            return
        self.notify(f"preset saved to {path}")

    def action_load_preset(self) -> None:
        self.push_screen(PresetScreen(False, list_presets(self.state_dir)), self._preset_picked)

    def _preset_picked(self, name: str | None) -> None:
        if not name:
            return
        try:
            self.settings.apply_json(load_preset(self.state_dir, name))
        except (ConvaError, ValueError, TypeError, AttributeError) as exc:
            self._error(f"could not load preset '{name}': {exc}")
            return
        available = set(self.session.pack.values) if self.session and self.session.pack else set()
        dropped = [v for v, s in self.settings.active() if v not in available]
        for v in dropped:
            self.settings.values[v].stance = "off"
        if dropped:
            self.notify(f"not in this pack, left off: {', '.join(dropped)}", severity="warning")
        self.query_one(ValuePanel).sync()
        self._refresh_status()
        self.notify(f"preset '{name}' loaded")

    @on(ValueRow.Changed)
    def _value_changed(self) -> None:
        self._refresh_status()

    def help_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        return [("Anywhere", binding_rows(self.BINDINGS, HELP)),
                ("Value panel (focus a value with Tab or a click)",
                 binding_rows(ValueRow.BINDINGS)),
                ("Focus", binding_rows(Screen.BINDINGS)[:2]),
                ("Message box", [("enter", "Send the message")])]

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.help_sections()))
