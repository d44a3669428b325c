"""Widgets: the strength stepper, the value rows and panel, and chat turns."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Button, Label, Static

from .settings import P0_MAX, P0_MIN, P0_STEP, ChatSettings, ValueSetting, clamp_p0, panel_groups

STANCE_LABEL = {"off": "off", "toward": "on ↑", "away": "away ↓"}


class Stepper(Horizontal):
    """A number with - and + buttons: P0 from 0.50 to 0.99 in steps of 0.01."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left,minus", "step(-1)", "Weaker", show=False),
        Binding("right,plus,equals_sign", "step(1)", "Stronger", show=False),
    ]
    can_focus = True
    value: reactive[float] = reactive(0.95, init=False)

    class Changed(Message):
        def __init__(self, stepper: Stepper, value: float) -> None:
            super().__init__()
            self.stepper = stepper
            self.value = value

    def __init__(self, value: float, *, low: float = P0_MIN, high: float = P0_MAX,
                 step: float = P0_STEP, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.low, self.high, self.step = low, high, step
        self.set_reactive(Stepper.value, clamp_p0(value))

    def compose(self) -> ComposeResult:
        for label, cls in (("-", "dec"), (f"{self.value:.2f}", "num"), ("+", "inc")):
            if cls == "num":
                yield Label(label, classes="num")
            else:
                button = Button(label, classes=cls, compact=True)
                button.can_focus = False
                yield button

    def action_step(self, direction: int) -> None:
        self.value = round(min(self.high, max(self.low, self.value + direction * self.step)), 2)

    @on(Button.Pressed, ".dec")
    def _dec(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_step(-1)

    @on(Button.Pressed, ".inc")
    def _inc(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_step(1)

    def watch_value(self, value: float) -> None:
        self.query_one(".num", Label).update(f"{value:.2f}")
        self.post_message(self.Changed(self, value))


class ValueRow(Horizontal):
    """One value: its stance (off / on toward / away) and strength P0."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space,enter", "cycle", "Off / on / away", show=False),
        Binding("left,minus", "step(-1)", "Strength -0.01", show=False),
        Binding("right,plus,equals_sign", "step(1)", "Strength +0.01", show=False),
        Binding("up", "app.focus_previous", "Previous value", show=False),
        Binding("down", "app.focus_next", "Next value", show=False),
    ]
    can_focus = True

    class Changed(Message):
        def __init__(self, value: str) -> None:
            super().__init__()
            self.value = value

    def __init__(self, value: str, setting: ValueSetting) -> None:
        super().__init__(id=f"value-{value}", classes="value-row")
        self.value = value
        self.setting = setting

    def compose(self) -> ComposeResult:
        yield Label(self.value, classes="name")
        button = Button(STANCE_LABEL[self.setting.stance], classes="stance",
                        compact=True)
        button.can_focus = False
        yield button
        stepper = Stepper(self.setting.p0)
        stepper.can_focus = False
        yield stepper

    def sync(self) -> None:
        """Show the setting (after a preset load)."""
        button = self.query_one(".stance", Button)
        button.label = STANCE_LABEL[self.setting.stance]
        for d in ("off", "toward", "away"):
            self.set_class(self.setting.stance == d, f"-{d}")
        stepper = self.query_one(Stepper)
        if stepper.value != self.setting.p0:
            stepper.value = self.setting.p0

    def on_mount(self) -> None:
        self.sync()

    def action_cycle(self) -> None:
        self.setting.cycle()
        self.sync()
        self.post_message(self.Changed(self.value))

    def action_step(self, direction: int) -> None:
        self.query_one(Stepper).action_step(direction)

    @on(Button.Pressed, ".stance")
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.focus()
        self.action_cycle()

    @on(Stepper.Changed)
    def _stepped(self, event: Stepper.Changed) -> None:
        event.stop()
        if self.setting.p0 != event.value:
            self.setting.p0 = event.value
            self.post_message(self.Changed(self.value))


class ValuePanel(VerticalScroll):
    """The 10 values grouped by higher-order group (hedonism shown once)."""

    def __init__(self, settings: ChatSettings, id: str | None = None) -> None:
        super().__init__(id=id)
        self.settings = settings

    def compose(self) -> ComposeResult:
        yield Label("Values", classes="panel-title")
        for group, names in panel_groups():
            title = group + (" (+ hedonism)" if group == "self-enhancement" else "")
            yield Label(title, classes="group")
            for name in names:
                yield ValueRow(name, self.settings.values[name])

    def sync(self) -> None:
        for row in self.query(ValueRow):
            row.sync()

    def set_available(self, names: set[str]) -> None:
        """Disable values the pack does not have."""
        for row in self.query(ValueRow):
            available = row.value in names
            row.disabled = not available
            row.tooltip = None if available else "not in this pack"


class ReplyView(Vertical):
    """A streamed reply and its diagnostics line."""

    def __init__(self, title: str | None = None, classes: str | None = None) -> None:
        super().__init__(classes=classes)
        self.title = title
        self.text = ""
        self.diag = ""

    def compose(self) -> ComposeResult:
        if self.title:
            yield Label(self.title, classes="reply-title")
        yield Static("…", classes="body", markup=False)
        yield Static("", classes="diag", markup=False)

    def append(self, piece: str) -> None:
        self.text += piece
        self.query_one(".body", Static).update(Text(self.text))

    def finish(self, summary: str, stopped: bool = False) -> None:
        if not self.text:
            self.query_one(".body", Static).update(Text("(no text)", style="dim"))
        self.diag = summary + (" · stopped" if stopped else "")
        self.query_one(".diag", Static).update(Text(self.diag))

    def fail(self, message: str) -> None:
        self.diag = f"error: {message}"
        self.query_one(".diag", Static).update(Text(self.diag, style="red"))


class TurnView(Vertical):
    """One exchange: the user's message, then the reply (or steered | unsteered side by side)."""

    def __init__(self, user: str, settings: str, compare: bool) -> None:
        super().__init__(classes="turn")
        self.user = user
        self.settings_line = settings
        self.compare = compare

    def compose(self) -> ComposeResult:
        yield Static(Text(self.user), classes="user")
        yield Static(Text(self.settings_line), classes="settings")
        if self.compare:
            with Horizontal(classes="compare"):
                yield ReplyView("steered", classes="steered")
                yield ReplyView("unsteered (none)", classes="unsteered")
        else:
            yield ReplyView(classes="steered")

    @property
    def steered(self) -> ReplyView:
        return self.query_one(".steered", ReplyView)

    @property
    def unsteered(self) -> ReplyView:
        return self.query_one(".unsteered", ReplyView)


class StatusBar(Static):
    """Model, pack and the current steering settings."""

