"""Redaction: the backstop that keeps a password out of every line, raw or URL-encoded."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from runner import redact


def test_registered_secret_is_masked_in_raw_and_encoded_forms() -> None:
    redact.forget_all()
    secret = "p@ss:/%#? word"
    redact.register(secret)
    text = f"a {secret} b {quote(secret, safe='')} c {quote_plus(secret)}"
    out = redact.redact(text)
    assert secret not in out and quote(secret, safe="") not in out
    assert quote_plus(secret) not in out


def test_password_in_any_url_is_masked_even_if_never_registered() -> None:
    redact.forget_all()
    assert redact.redact("postgresql://user:hunter2@db/app") == "postgresql://user:***@db/app"


def test_unparseable_url_text_still_registers_its_password() -> None:
    redact.forget_all()
    redact.register_url_text("postgresql://user:top$ecret@@host:x/db")
    assert "top$ecret" not in redact.redact("error near top$ecret")


@settings(max_examples=200, deadline=None)
@example("***")  # once generated: the mask itself
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=3, max_size=40))
def test_no_generated_password_survives_redaction(password: str) -> None:
    forms = (password, quote(password, safe=""), quote_plus(password))
    # A password that the mask and the words around it spell ("***", "* at") cannot be told
    # from them, masked or not.
    assume(not any(form in f"connect failed for {redact.MASK} at host" for form in forms))
    redact.forget_all()
    redact.register(password)
    for form in forms:
        assert form not in redact.redact(f"connect failed for {form} at host")
