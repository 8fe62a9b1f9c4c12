// Building the DOM from data without ever parsing data as HTML: names, notes and
// message bodies are user input, so they only ever become text nodes.

/**
 * An element: h("button", {class: "btn", onclick: fn, disabled: true}, "Save").
 * Props: `class` (string or array), `dataset`, `on<event>` listeners, DOM
 * properties given non-string values (checked, disabled), attributes otherwise.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") {
      el.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "checked") {
      // The attribute too, so that patch() sees a change of it in the markup.
      el.checked = true;
      el.setAttribute("checked", "");
    } else if (typeof value !== "string" && name in el) {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  el.append(...nodes(children));
  return el;
}

function nodes(children) {
  const out = [];
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    out.push(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return out;
}

/**
 * Replace a region's children, unless they would come out the same: a button
 * replaced between the press and the release of the mouse loses the click.
 * Keyboard focus stays on the element with the same `data-key`.
 *
 * Listeners are not compared: render functions give them only ids that the
 * markup shows too, so equal markup means equal behaviour.
 */
export function patch(region, ...children) {
  const probe = document.createElement("div");
  probe.append(...nodes(children));
  if (probe.innerHTML === region.innerHTML) return;
  const active = document.activeElement;
  const key = active && active !== document.body && region.contains(active)
    ? active.dataset.key : undefined;
  region.replaceChildren(...probe.childNodes);
  if (key !== undefined) {
    region.querySelector(`[data-key="${CSS.escape(key)}"]`)?.focus({ preventScroll: true });
  }
}

export function $(selector, root = document) {
  const found = root.querySelector(selector);
  if (!found) throw new Error(`missing element ${selector}`);
  return found;
}

export function show(el, visible) {
  el.hidden = !visible;
}
