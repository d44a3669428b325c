"""Modal screens: help (every key binding), pack chooser (extract or open), presets."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, ProgressBar, Static


def binding_rows(bindings: Iterable[BindingType],
                 long: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(keys, description) per binding; `long` maps actions to fuller descriptions."""
    rows = []
    for b in bindings:
        if isinstance(b, Binding):
            keys = ", ".join(k.strip().replace("_sign", "") for k in b.key.split(","))
            text = (long or {}).get(b.action) or b.description or b.action
            rows.append((b.key_display or keys, text))
    return rows


class HelpScreen(ModalScreen[None]):
    """Every key binding of the chat, grouped by where it applies."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,f1,q", "dismiss", "Close help"),
    ]

    def __init__(self, sections: list[tuple[str, list[tuple[str, str]]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Label("conva-mlx chat: key bindings", classes="title")
            with VerticalScroll(id="help-body"):
                for title, rows in self.sections:
                    yield Label(title, classes="group")
                    table = Text()
                    for key, description in rows:
                        table.append(f"{key:>24}  ", style="bold")
                        table.append(description + "\n")
                    table.rstrip()
                    yield Static(table)
                yield Label("Mouse: click a value's state to cycle it, - / + to change its "
                            "strength.", classes="note")
            yield Button("Close", id="close", variant="primary")

    @on(Button.Pressed, "#close")
    def _close(self) -> None:
        self.dismiss(None)


class PackScreen(ModalScreen[tuple[str, str] | None]):
    """No pack yet (or a new one wanted): extract one for this model, or open a directory.

    Dismisses with ("extract", values spec) or ("open", path), or None to chat unsteered.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Close"),
    ]

    def __init__(self, model_id: str, reason: str, default_path: str = "") -> None:
        super().__init__()
        self.model_id = model_id
        self.reason = reason
        self.default_path = default_path

    def compose(self) -> ComposeResult:
        with Vertical(id="pack-dialog"):
            yield Label(f"Vector pack for {self.model_id}", classes="title")
            yield Static(self.reason, classes="note")
            yield Label("Extract a pack on this machine (values: 'all' or a,b,c):")
            with Horizontal(classes="row"):
                yield Input("all", id="extract-values")
                yield Button("Extract", id="extract", variant="primary")
            yield Label("Or open a pack directory:")
            with Horizontal(classes="row"):
                yield Input(self.default_path, placeholder="path/to/pack", id="pack-path")
                yield Button("Open", id="open")
            yield Button("Chat without steering", id="skip")

    @on(Button.Pressed, "#extract")
    @on(Input.Submitted, "#extract-values")
    def _extract(self) -> None:
        self.dismiss(("extract", self.query_one("#extract-values", Input).value))

    @on(Button.Pressed, "#open")
    @on(Input.Submitted, "#pack-path")
    def _open(self) -> None:
        path = self.query_one("#pack-path", Input).value.strip()
        if not path:
            self.notify("type a pack directory first", severity="warning")
            return
        self.dismiss(("open", str(Path(path).expanduser())))

    @on(Button.Pressed, "#skip")
    def _skip(self) -> None:
        self.dismiss(None)


class ExtractScreen(ModalScreen[None]):
    """Extraction progress (extract_pack's stage callback); the app closes it when done."""

    def compose(self) -> ComposeResult:
        with Vertical(id="extract-dialog"):
            yield Label("Extracting a vector pack", classes="title")
            yield Static("starting…", id="stage")
            yield ProgressBar(total=None, show_eta=False, id="progress")
            yield Static("This runs once per model; you can keep chatting afterwards.",
                         classes="note")

    def stage(self, name: str, done: int, total: int) -> None:
        self.query_one("#stage", Static).update(f"{name}: {done}/{total}")
        self.query_one("#progress", ProgressBar).update(total=max(total, 1), progress=done)


class PresetScreen(ModalScreen[str | None]):
    """Save the current values under a name, or pick a saved preset to load."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Close"),
    ]

    def __init__(self, save: bool, names: list[str]) -> None:
        super().__init__()
        self.save = save
        self.names = names

    def compose(self) -> ComposeResult:
        with Vertical(id="preset-dialog"):
            if self.save:
                yield Label("Save preset as:", classes="title")
                yield Input(placeholder="name", id="preset-name")
            elif self.names:
                yield Label("Load preset:", classes="title")
                yield OptionList(*self.names, id="preset-list")
            else:
                yield Label("No presets saved yet (F5 saves one).", classes="title")

    @on(Input.Submitted, "#preset-name")
    def _save(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(event.value.strip())

    @on(OptionList.OptionSelected, "#preset-list")
    def _load(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.names[event.option_index])
