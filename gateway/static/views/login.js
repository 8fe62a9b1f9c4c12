// Signing in: the token is exchanged for an HttpOnly session cookie and is
// never stored in the browser.

import * as api from "../api.js";
import { $, patch, h } from "../dom.js";
import { explain } from "../explain.js";
import { supportLine } from "./press.js";

export function setupLogin({ signedIn }) {
  const form = $("#login-form");
  const input = $("#login-token");
  const button = $("#login-submit");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    const problem = $("#login-error");
    form.querySelector('[data-for="token"]').textContent = token ? "" : "Paste your token";
    if (!token) return;
    button.disabled = true;
    button.textContent = "Signing in…";
    problem.hidden = true;
    try {
      const session = await api.login(token);
      input.value = "";
      signedIn(session);
    } catch (error) {
      problem.hidden = false;
      if (error instanceof api.ApiError) {
        const { title, hint } = explain(error.plain());
        patch(problem, h("div", { class: "alert-body" }, h("p", { class: "alert-title" }, title),
          h("p", { class: "alert-hint" }, hint), supportLine(error.plain())));
      } else {
        patch(problem, "The server could not be reached. Check your connection and try again.");
      }
    } finally {
      button.disabled = false;
      button.textContent = "Sign in";
    }
  });
}

export function showLogin(message = "") {
  $("#booting").hidden = true;
  $("#app").hidden = true;
  $("#login").hidden = false;
  const problem = $("#login-error");
  problem.hidden = !message;
  problem.textContent = message;
  $("#login-token").focus();
}
