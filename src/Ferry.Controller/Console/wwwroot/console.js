// Ferry admin console: one page, hash routes, plain DOM. No framework and no build step, so what ships is what you read.
// The page's Content-Security-Policy allows only this file's script and console.css: no inline handlers or style
// attributes anywhere, so every listener is attached here and every look comes from a class.
'use strict';

(() => {
  const POLL_MS = 2000;
  const csrf = document.querySelector('meta[name=csrf]')?.content ?? '';
  const operatorName = document.querySelector('meta[name=operator]')?.content ?? '';

  // ---------------------------------------------------------------- small helpers

  /** HTML-escapes anything: every value shown comes from operators or daemons, so all of it goes through here. */
  function esc(value) {
    return String(value ?? '').replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  }

  /** A value, or a muted dash when there is none (not measured, not reported). */
  function orDash(value) {
    return value === null || value === undefined || value === '' ? '<span class="muted">—</span>' : esc(value);
  }

  /** "3m 12s", "2h 5m", "4d 1h": precise when short, coarse when long. */
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return '';
    let s = Math.max(0, Math.floor(seconds));
    const d = Math.floor(s / 86400); s %= 86400;
    const h = Math.floor(s / 3600); s %= 3600;
    const m = Math.floor(s / 60); s %= 60;
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}h ${m}m`;
    if (m > 0) return `${m}m ${s}s`;
    return `${s}s`;
  }

  function secondsSince(iso) {
    return iso ? (Date.now() - Date.parse(iso)) / 1000 : null;
  }

  /** Local date and time of an ISO instant, as the operator's browser writes it. */
  function when(iso) {
    if (!iso) return '<span class="muted">—</span>';
    const date = new Date(iso);
    return `<time datetime="${esc(iso)}">${esc(date.toLocaleString())}</time>`;
  }

  /** Local time plus how long ago ("12s ago"), for last-seen style fields. */
  function whenAgo(iso) {
    if (!iso) return '<span class="muted">never</span>';
    return `${when(iso)} <span class="muted">(${esc(duration(secondsSince(iso)))} ago)</span>`;
  }

  function bytes(n) {
    if (n === null || n === undefined) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let v = Number(n), i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
  }

  function ms(value) {
    if (value === null || value === undefined) return '—';
    return `${Number(value) < 10 ? Number(value).toFixed(1) : Math.round(Number(value))} ms`;
  }

  function badge(text, cls) {
    return `<span class="badge ${esc(cls)}">${esc(text)}</span>`;
  }

  function stateBadge(state) {
    return badge(state, state === 'online' ? 'state-online' : 'state-offline');
  }

  /** Connector/relay uptime or downtime as words: "up 3m 12s", "down 1h 2m". */
  function sinceText(state, upSeconds, downSeconds) {
    if (state === 'online') return upSeconds === null || upSeconds === undefined ? 'up' : `up ${duration(upSeconds)}`;
    return downSeconds === null || downSeconds === undefined ? 'down' : `down ${duration(downSeconds)}`;
  }

  /**
   * The clock offset with the colour class the controller's verdict gives (ok / warning / refused). Relays report no
   * verdict, so for them it is judged here with the controller's default limits (±3 s warns, ±5 s is refused).
   */
  function offsetHtml(offsetMs, status) {
    if (offsetMs === null || offsetMs === undefined) return '<span class="muted">not measured</span>';
    const verdict = status ?? (Math.abs(offsetMs) > 5000 ? 'refused' : Math.abs(offsetMs) > 3000 ? 'warning' : 'ok');
    const sign = offsetMs > 0 ? '+' : offsetMs < 0 ? '−' : '±';
    const label = verdict === 'ok' ? '' : ` (${verdict})`;
    return `<span class="offset offset-${esc(verdict)}">${sign}${esc(Math.abs(offsetMs))} ms${esc(label)}</span>`;
  }

  function stunHtml(stun) {
    if (!stun) return '<span class="muted">—</span>';
    const cls = stun.status === 'ok' ? 'stun-ok' : stun.status === 'failed' ? 'stun-failed' : 'stun-not-run';
    let html = badge(stun.status, cls);
    if (stun.mappedAddress) html += ` <code>${esc(stun.mappedAddress)}</code>`;
    if (stun.status === 'failed' && stun.error) html += ` <span class="muted">${esc(stun.error)}</span>`;
    return html;
  }

  function list(values) {
    return values && values.length ? values.map(esc).join(', ') : '<span class="muted">—</span>';
  }

  function routeLink(prefix, name) {
    return `<a href="#/${prefix}/${esc(encodeURIComponent(name))}">${esc(name)}</a>`;
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  /**
   * Calls the admin API with the console session. Changes carry the page's anti-forgery token (the API refuses them
   * without it); a 401 means the session ended, so the operator goes back to the sign-in page.
   */
  async function api(method, url, body) {
    const init = {
      method,
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRF': csrf },
    };
    if (body !== undefined) init.body = JSON.stringify(body);
    let response;
    try {
      response = await fetch(url, init);
    } catch (e) {
      throw new ApiError(0, `the controller cannot be reached (${e.message})`);
    }
    if (response.status === 401) {
      location.assign('/console/login');
      throw new ApiError(401, 'your session has ended; sign in again');
    }
    const text = response.status === 204 ? '' : await response.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = null; }
    }
    if (!response.ok) {
      throw new ApiError(response.status, data?.detail || data?.title || `${response.status} ${response.statusText}`);
    }
    return data;
  }

  const get = url => api('GET', url);
  const post = (url, body) => api('POST', url, body);
  // PATCH changes only the fields its body names; a 204 answer (a password set) gives null.
  const patch = (url, body) => api('PATCH', url, body);
  const del = url => api('DELETE', url);
  const seg = value => encodeURIComponent(value);

  // ---------------------------------------------------------------- page-level messages

  /** Poll trouble (controller down, a view's object gone) shows in one line and clears itself when polling recovers. */
  function setPollStatus(message) {
    const el = document.getElementById('poll-status');
    el.textContent = message;
    el.classList.toggle('error', message !== '');
  }

  /** Result of a button action (remove, revoke…): errors stay until the next action or navigation. */
  function notice(message, isError = true) {
    const el = document.getElementById('notice');
    el.textContent = message;
    el.hidden = message === '';
    el.classList.toggle('error', isError);
    el.classList.toggle('ok', !isError);
  }

  // ---------------------------------------------------------------- polling

  /**
   * Runs refresh now and every POLL_MS while the view is shown. Refreshes never overlap (a slow controller is not piled
   * on), a hidden tab skips them, and refresh.now() runs one at once (after a change) without starting a second loop.
   */
  function startPolling(refresh) {
    let timer = 0, stopped = false, running = false, again = false;
    async function tick() {
      clearTimeout(timer);
      if (stopped) return;
      if (running) { again = true; return; }
      running = true;
      try {
        if (!document.hidden) {
          await refresh();
          if (!stopped) setPollStatus('');
        }
      } catch (e) {
        if (!stopped && e.status !== 401) setPollStatus(`Could not refresh: ${e.message}`);
      } finally {
        running = false;
      }
      if (stopped) return;
      if (again) { again = false; tick(); } else { timer = setTimeout(tick, POLL_MS); }
    }
    tick();
    return { stop() { stopped = true; clearTimeout(timer); }, now: tick };
  }

  // ---------------------------------------------------------------- DOM updates that keep the page usable while polling

  /** Replaces an element's content only when it changed, so an unchanged poll does not disturb selection or reading. */
  function swap(el, html) {
    if (el._html === html) return;
    el._html = html;
    el.innerHTML = html;
  }

  /**
   * Brings a table body in line with items, keyed per row, touching only the cells whose content changed: a button the
   * operator has focused survives a poll, and a live region (connectors) announces only what really changed.
   * cellsOf(item) gives one entry per column: an HTML string, or {html, cls, field, live} for a cell with a class,
   * a data-field hook, or aria-live="off" (a ticking uptime should not be read out every two seconds).
   */
  function syncRows(tbody, items, keyOf, cellsOf, rowAttrs, emptyText = 'None yet.') {
    const existing = new Map();
    for (const row of [...tbody.rows]) existing.set(row.dataset.key, row);
    const seen = new Map();
    let previous = null;
    const place = row => {
      const next = previous ? previous.nextSibling : tbody.firstChild;
      if (row !== next) tbody.insertBefore(row, next);
      previous = row;
    };
    for (const item of items) {
      let key = String(keyOf(item));
      // Identical entries (two audit lines in one millisecond) still get rows of their own.
      const count = seen.get(key) ?? 0;
      seen.set(key, count + 1);
      if (count > 0) key += `#${count}`;
      let row = existing.get(key);
      existing.delete(key);
      if (!row) {
        row = document.createElement('tr');
        row.dataset.key = key;
      }
      for (const [name, value] of Object.entries(rowAttrs ? rowAttrs(item) : {})) {
        if (value === null || value === undefined || value === false) row.removeAttribute(name);
        else if (row.getAttribute(name) !== String(value)) row.setAttribute(name, value);
      }
      const cells = cellsOf(item);
      while (row.cells.length > cells.length) row.deleteCell(-1);
      cells.forEach((spec, i) => {
        const cell = row.cells[i] ?? row.insertCell();
        const c = typeof spec === 'string' ? { html: spec } : spec;
        if (cell.className !== (c.cls ?? '')) cell.className = c.cls ?? '';
        if (c.field) cell.dataset.field = c.field;
        if (c.live) cell.setAttribute('aria-live', c.live);
        swap(cell, c.html);
      });
      place(row);
    }
    if (items.length === 0) {
      let row = existing.get('');
      existing.delete('');
      if (!row) {
        row = document.createElement('tr');
        row.dataset.key = '';
        row.className = 'empty';
        const cell = row.insertCell();
        cell.colSpan = tbody.closest('table')?.tHead?.rows[0]?.cells.length ?? 1;
        cell.textContent = emptyText;
      }
      place(row);
    }
    for (const row of existing.values()) row.remove();
  }

  /** Fills a select from a list without losing the operator's choice (the list is refreshed by every poll). */
  function fillSelect(select, options, emptyText) {
    const signature = JSON.stringify(options);
    if (select._signature === signature) return;
    select._signature = signature;
    const keep = select.value;
    select.innerHTML = options.length
      ? options.map(o => `<option value="${esc(o.value)}">${esc(o.label ?? o.value)}</option>`).join('')
      : `<option value="">${esc(emptyText)}</option>`;
    if (options.some(o => o.value === keep)) select.value = keep;
  }

  function table(testid, caption, headers, extra = '') {
    const head = headers.map(h => h === '' ? '<th scope="col"><span class="sr-only">Actions</span></th>' : `<th scope="col">${esc(h)}</th>`).join('');
    return `<div class="table-wrap"><table data-testid="${esc(testid)}"><caption>${esc(caption)}</caption>` +
      `<thead><tr>${head}</tr></thead><tbody${extra}></tbody></table></div>`;
  }

  // ---------------------------------------------------------------- forms and their error messages

  /**
   * One labelled input with its error slot right after it; aria-describedby ties the two, so a screen reader reads the
   * error with the field. keys: how API messages that quote no value start when they are about this field; mentions:
   * words anywhere in a message that tie it to this field (a checkbox holds no value a message could quote).
   */
  function field({ id, label, name, type = 'text', placeholder = '', required = false, autocomplete = 'off', keys = '', mentions = '', select = false, hint = '' }) {
    const err = `err-${id}`;
    const described = hint ? `${err} hint-${id}` : err;
    const attrs = `id="${esc(id)}" name="${esc(name)}" aria-describedby="${esc(described)}"` +
      (required ? ' required' : '') + (keys ? ` data-keys="${esc(keys)}"` : '') + (mentions ? ` data-mentions="${esc(mentions)}"` : '');
    const hintHtml = hint ? `<small class="hint" id="hint-${esc(id)}">${esc(hint)}</small>` : '';
    const errHtml = `<span class="field-error" id="${esc(err)}"></span>`;
    if (type === 'checkbox') {
      return `<div class="field check"><input type="checkbox" ${attrs}>${errHtml}<label for="${esc(id)}">${esc(label)}</label>${hintHtml}</div>`;
    }
    const control = select
      ? `<select ${attrs}></select>`
      : `<input type="${esc(type)}" ${attrs} autocomplete="${esc(autocomplete)}"${placeholder ? ` placeholder="${esc(placeholder)}"` : ''}>`;
    return `<div class="field"><label for="${esc(id)}">${esc(label)}</label>${control}${errHtml}${hintHtml}</div>`;
  }

  function formHtml(testid, title, fields, submitLabel) {
    const id = `h-${testid}`;
    return `<section class="card" aria-labelledby="${id}"><h2 id="${id}">${esc(title)}</h2>` +
      `<form data-testid="${esc(testid)}" novalidate>${fields.join('')}` +
      `<p class="error form-error" role="alert"></p>` +
      `<div class="form-actions"><button type="submit">${esc(submitLabel)}</button></div></form></section>`;
  }

  function formValues(form) {
    const values = {};
    for (const el of form.elements) {
      if (!el.name) continue;
      values[el.name] = el.type === 'checkbox' ? el.checked : el.value.trim();
    }
    return values;
  }

  function clearErrors(form) {
    for (const span of form.querySelectorAll('.field-error')) span.textContent = '';
    for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
    form.querySelector('.form-error').textContent = '';
  }

  /**
   * Which field an API refusal is about. The API quotes the offending value ("'10.0.0.0/33' is not a valid CIDR",
   * "port range '80-22' runs backwards"), so the field holding that value (or, for a port list, a part of it) is the one;
   * messages that quote nothing ("password must be…") are matched by how they start (data-keys).
   */
  function fieldForError(form, detail) {
    const fields = [...form.querySelectorAll('input:not([type=hidden]):not([type=checkbox]), select')];
    const quoted = [...detail.matchAll(/'([^']*)'/g)].map(m => m[1]);
    // "8.8.8.8 is a public address, and network 'corp' is not an exit network": a message that opens with a value is
    // about that value, whatever else it quotes.
    const opener = fields.find(f => f.tagName === 'INPUT' && f.value.trim().length > 1 && detail.startsWith(`${f.value.trim()} `));
    if (opener) return opener;
    for (const q of quoted) {
      const hit = q !== '' && fields.find(f => f.value.trim() === q);
      if (hit) return hit;
    }
    for (const q of quoted) {
      const hit = q.length > 1 && fields.find(f => f.value.includes(q));
      if (hit) return hit;
    }
    const lower = detail.toLowerCase();
    const keyed = fields.find(f => (f.dataset.keys ?? '').split('|').some(k => k && lower.startsWith(k)));
    if (keyed) return keyed;
    const mentioned = [...form.querySelectorAll('[data-mentions]')]
      .find(f => f.dataset.mentions.split('|').some(k => k && lower.includes(k)));
    if (mentioned) return mentioned;
    if (quoted.includes('')) {
      // "network name '' is not valid": the empty field whose name the message mentions, else the first empty one.
      const empty = fields.filter(f => f.value.trim() === '');
      return empty.find(f => lower.includes(f.name.toLowerCase())) ?? empty[0] ?? null;
    }
    return null;
  }

  function showFormError(form, error) {
    const detail = error.message || 'the request failed';
    const target = error.status >= 400 && error.status < 500 ? fieldForError(form, detail) : null;
    const slot = target && document.getElementById(`err-${target.id}`);
    if (slot) {
      slot.textContent = detail;
      target.setAttribute('aria-invalid', 'true');
      target.focus();
    } else {
      form.querySelector('.form-error').textContent = detail;
    }
  }

  /** Submits a form through submit(values); errors land next to their field, and the button is off while it runs. */
  function bindForm(form, submit) {
    form.addEventListener('submit', async event => {
      event.preventDefault();
      clearErrors(form);
      notice('');
      const button = form.querySelector('button[type=submit]');
      button.disabled = true;
      try {
        await submit(formValues(form));
      } catch (e) {
        if (e.status !== 401) showFormError(form, e);
      } finally {
        button.disabled = false;
      }
    });
  }

  /** Runs a button's change; its failure shows in the page notice (there is no field to put it next to). */
  async function act(button, work) {
    notice('');
    button.disabled = true;
    try {
      await work();
    } catch (e) {
      if (e.status !== 401) notice(e.message);
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- edit forms

  /**
   * An edit form: like formHtml, but its heading is inside the form and names it (a form landmark "Edit resource db"),
   * and Cancel sits next to Save. Views show it in an edit area outside every polled region, so a refresh never
   * overwrites what is being typed.
   */
  function editFormHtml(testid, title, fields, submitLabel = 'Save') {
    const id = `h-${testid}`;
    return `<section class="card editor"><form data-testid="${esc(testid)}" aria-labelledby="${id}" novalidate>` +
      `<h2 id="${id}">${esc(title)}</h2>${fields.join('')}` +
      `<p class="error form-error" role="alert"></p>` +
      `<div class="form-actions"><button type="submit">${esc(submitLabel)}</button>` +
      `<button type="button" class="secondary" data-act="cancel">Cancel</button></div></form></section>`;
  }

  /**
   * Shows an edit form in area and binds it: submit(values, form, editor) makes the change (refusals land next to their
   * field, as in every form), Cancel or Escape closes it. editor.close() gives focus back through onClose (to the button
   * that opened the form); close(false) does not, for a form replaced by another or whose object is gone.
   */
  function openEditor(area, html, submit, onClose) {
    area.innerHTML = html;
    const form = area.querySelector('form');
    const editor = {
      form,
      open: true,
      close(refocus = true) {
        if (!editor.open) return;
        editor.open = false;
        if (area.contains(form)) area.replaceChildren();
        if (refocus) onClose?.();
      },
    };
    bindForm(form, values => submit(values, form, editor));
    form.querySelector('button[data-act=cancel]').addEventListener('click', () => editor.close());
    form.addEventListener('keydown', event => {
      if (event.key === 'Escape') {
        event.preventDefault();
        editor.close();
      }
    });
    return editor;
  }

  /** A refusal found before asking the API (an emptied name), shown like the API's own. */
  function fieldError(input, message) {
    const slot = document.getElementById(`err-${input.id}`);
    if (slot) slot.textContent = message;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  }

  /** A view's status line ("Password of alice set."): polite, and it stays until the next change replaces it. */
  function statusLineHtml() {
    return '<p class="status-line" role="status" data-testid="status"></p>';
  }

  function say(root, message) {
    const line = root.querySelector('.status-line');
    if (line) line.textContent = message;
  }

  /** The fields of a form whose value differs from what the object had: a PATCH body that leaves the rest alone. */
  function changedFields(values, original) {
    const body = {};
    for (const [key, was] of Object.entries(original)) {
      if (values[key] !== was) body[key] = values[key];
    }
    return body;
  }

  /** Copies a <pre>'s text; clipboards can be refused (plain http, permissions), which simply leaves the text to select. */
  function copyFrom(button) {
    const pre = document.getElementById(button.dataset.copy);
    if (!pre || !navigator.clipboard) return;
    navigator.clipboard.writeText(pre.textContent).then(() => {
      button.textContent = 'Copied';
      setTimeout(() => { button.textContent = 'Copy'; }, 1500);
    }, () => {});
  }

  // ---------------------------------------------------------------- shown-once secrets (tokens, keys)

  function copyBlock(id, title, testid) {
    return `<div class="copy-block"><div class="copy-head"><h3 id="${id}-h">${esc(title)}</h3>` +
      `<button type="button" data-copy="${id}" aria-describedby="${id}-h">Copy</button></div>` +
      `<pre id="${id}" data-testid="${esc(testid)}" tabindex="0"></pre></div>`;
  }

  /**
   * The provisioning answer, shown once: the token pair (the exact tokens file the daemon reads with --tokens) and ready
   * commands. It sits outside the polled region, so only "Done" (or leaving the page) takes it away.
   */
  function showProvisioned(area, kind, answer) {
    const daemon = kind === 'Relay' ? answer.relay : answer.connector;
    const part = kind === 'Relay' ? 'relay' : 'connector';
    area.innerHTML = `<section class="card once" data-testid="provisioned" aria-labelledby="once-h">
      <h2 id="once-h" tabindex="-1">${esc(kind)} ${esc(daemon.name)} provisioned</h2>
      <p class="once-warning">The token pair is shown only now.</p>
      <p>Save it as the tokens file (readable only by the daemon's user) and start the daemon with
        <code>ferry ${part} --tokens FILE</code>; the daemon rewrites the file whenever the pair rotates.</p>
      ${copyBlock('once-tokens', 'Tokens file', 'tokens-json')}
      ${copyBlock('once-plain', 'Plain process', 'deploy-plain')}
      ${copyBlock('once-systemd', 'systemd', 'deploy-systemd')}
      ${copyBlock('once-container', 'Container', 'deploy-container')}
      ${copyBlock('once-helm', 'Helm', 'deploy-helm')}
      <div class="form-actions"><button type="button" data-act="done">Done</button></div>
    </section>`;
    // textContent, not markup: the tokens and commands are shown exactly as the API gave them.
    document.getElementById('once-tokens').textContent = JSON.stringify(answer.tokens, null, 2);
    document.getElementById('once-plain').textContent = answer.deploy?.plain ?? '';
    document.getElementById('once-systemd').textContent = answer.deploy?.systemd ?? '';
    document.getElementById('once-container').textContent = answer.deploy?.container ?? '';
    document.getElementById('once-helm').textContent = answer.deploy?.helm ?? '';
    document.getElementById('once-h').focus();
  }

  function showServiceAccountKey(area, answer) {
    area.innerHTML = `<section class="card once" data-testid="service-account-created" aria-labelledby="once-h">
      <h2 id="once-h" tabindex="-1">Service account ${esc(answer.account.name)} created</h2>
      <p class="once-warning">Its key is shown only now; the controller keeps only a hash of it.</p>
      <p>Give it to the client: <code>FERRY_SERVICE_ACCOUNT_KEY=… ferry client</code> or <code>--service-account-key-file FILE</code>.</p>
      ${copyBlock('once-key', 'Key', 'service-account-key')}
      <div class="form-actions"><button type="button" data-act="done">Done</button></div>
    </section>`;
    document.getElementById('once-key').textContent = answer.key;
    document.getElementById('once-h').focus();
  }

  /** Clicks on Copy and Done inside a view's shown-once area. */
  function bindOnceArea(area) {
    area.addEventListener('click', event => {
      const button = event.target.closest('button');
      if (!button) return;
      if (button.dataset.copy) copyFrom(button);
      if (button.dataset.act === 'done') area.replaceChildren(); // the secret leaves the page for good
    });
  }

  // ---------------------------------------------------------------- views
  // Each view builds its static part (headings, forms) once, then returns a poller that refreshes only tables and
  // read-only regions, so a form being typed in is never re-rendered.

  function viewHead(title, intro = '') {
    return `<h1 tabindex="-1">${esc(title)}</h1>${intro ? `<p class="intro">${intro}</p>` : ''}`;
  }

  // ---- Networks (with each network's connectors and resources, and connector provisioning)

  const CONNECTOR_COLUMNS = ['Name', 'State', 'Since', 'Location', 'Clients', 'Time offset', 'STUN', 'Hostname', 'Public IP', 'Private IPs', 'Version'];
  const NETWORK_RESOURCE_COLUMNS = ['Name', 'Address', 'Kind', 'TCP', 'UDP', 'Warning'];

  function connectorCells(c) {
    return [
      { html: routeLink('connectors', c.name), field: 'name' },
      { html: stateBadge(c.state), field: 'state' },
      { html: esc(sinceText(c.state, c.uptimeSeconds, c.downtimeSeconds)), field: 'since', live: 'off' },
      { html: orDash(c.location), field: 'location' },
      { html: orDash(c.clients), field: 'clients', cls: 'num' },
      { html: offsetHtml(c.timeOffsetMs, c.timeOffsetStatus), field: 'offset', cls: 'num' },
      { html: stunHtml(c.stun), field: 'stun' },
      { html: orDash(c.hostname), field: 'hostname' },
      { html: orDash(c.publicIp), field: 'public-ip' },
      { html: list(c.privateIps), field: 'private-ips' },
      { html: orDash(c.version), field: 'version' },
    ];
  }

  function warningHtml(warning) {
    return warning ? `<span class="warning">${esc(warning)}</span>` : '<span class="muted">—</span>';
  }

  function networkResourceCells(r) {
    return [
      { html: esc(r.name), field: 'name' },
      { html: `<code>${esc(r.address)}</code>`, field: 'address' },
      { html: esc(r.kind), field: 'kind' },
      { html: esc(r.tcp), field: 'tcp' },
      { html: esc(r.udp), field: 'udp' },
      { html: warningHtml(r.warning), field: 'warning' },
    ];
  }

  function networkSectionHtml(name) {
    const id = `network-${name}`;
    return `<section class="network" data-network="${esc(name)}" aria-labelledby="${esc(id)}-h">
      <div class="section-head">
        <h2 id="${esc(id)}-h">${esc(name)}</h2>
        <p class="meta" data-field="settings"></p>
        <div class="section-actions">
          <button type="button" data-act="provision" data-network="${esc(name)}">Provision connector</button>
          <button type="button" class="secondary" data-act="edit-network" data-network="${esc(name)}" aria-label="Edit settings of network ${esc(name)}">Edit settings</button>
          <button type="button" class="secondary" data-act="delete-network" data-network="${esc(name)}">Remove network</button>
        </div>
      </div>
      <div class="edit-area"></div>
      ${table(`connectors-${name}`, `Connectors of ${name}`, CONNECTOR_COLUMNS, ' aria-live="polite"')}
      ${table(`network-resources-${name}`, `Resources of ${name}`, NETWORK_RESOURCE_COLUMNS)}
    </section>`;
  }

  function networkSettingsText(n) {
    const parts = [n.dnsServer ? `DNS ${n.dnsServer}` : 'DNS of the connector host', n.exit ? 'exit network' : 'private network'];
    return parts.join(' · ');
  }

  function viewNetworks(root) {
    root.innerHTML = `${viewHead('Networks', 'Remote networks, the connectors that serve them and the resources in them.')}
      ${statusLineHtml()}
      <div class="once-area"></div>
      <div class="forms">
        ${formHtml('form-network', 'New network', [
          field({ id: 'net-name', label: 'Name', name: 'name', required: true }),
          field({ id: 'net-dns', label: 'DNS server (optional)', name: 'dnsServer', placeholder: '10.0.0.2 or 10.0.0.2:53' }),
          field({ id: 'net-exit', label: 'Exit network (may hold public addresses)', name: 'exit', type: 'checkbox' }),
        ], 'Create network')}
        ${formHtml('form-connector', 'Provision connector', [
          field({ id: 'con-network', label: 'Network', name: 'network', select: true, keys: 'network is required' }),
          field({ id: 'con-name', label: 'Name (optional)', name: 'name', placeholder: 'generated when empty' }),
          field({ id: 'con-location', label: 'Location (optional)', name: 'location', placeholder: '52.37,4.90 or eu-west', keys: 'a location' }),
        ], 'Provision')}
      </div>
      <div class="networks"></div>`;
    const once = root.querySelector('.once-area');
    const container = root.querySelector('.networks');
    const networkForm = root.querySelector('[data-testid=form-network]');
    const connectorForm = root.querySelector('[data-testid=form-connector]');
    bindOnceArea(once);
    let known = new Map(); // name → network, as the last poll saw them: what a settings form starts from
    let editor = null, editing = null;
    const sectionOf = name => [...container.querySelectorAll(':scope > section.network')].find(s => s.dataset.network === name);
    const editButton = name => sectionOf(name)?.querySelector('button[data-act=edit-network]');

    // A network's settings form opens in its own section, under its buttons; one such form at a time on the page.
    function editSettings(n) {
      const area = sectionOf(n.name)?.querySelector('.edit-area');
      if (!area) return;
      editor?.close(false);
      say(root, '');
      notice('');
      const original = { dnsServer: n.dnsServer ?? '', exit: n.exit };
      editor = openEditor(area, editFormHtml('form-network-edit', `Edit network ${n.name}`, [
        field({ id: 'nete-dns', label: 'DNS server', name: 'dnsServer', placeholder: '10.0.0.2 or 10.0.0.2:53', keys: 'dns', hint: 'Leave empty to use the DNS of the connector host.' }),
        field({ id: 'nete-exit', label: 'Exit network', name: 'exit', type: 'checkbox', mentions: 'exit network|public resources', hint: 'May hold public addresses.' }),
      ]), async (v, _form, self) => {
        // Only what changed is sent: an emptied DNS server goes as "" (which clears it), an untouched one not at all.
        const changes = changedFields(v, original);
        if (Object.keys(changes).length === 0) {
          self.close();
          say(root, `Nothing changed in network ${n.name}.`);
          return;
        }
        await patch(`/api/v1/networks/${seg(n.name)}`, changes);
        self.close();
        say(root, `Network ${n.name} saved.`);
        poller.now();
      }, () => { editing = null; editButton(n.name)?.focus(); });
      editing = n.name;
      editor.form.elements.dnsServer.value = original.dnsServer;
      editor.form.elements.exit.checked = original.exit;
      editor.form.elements.dnsServer.focus();
    }

    bindForm(networkForm, async v => {
      await post('/api/v1/networks', { name: v.name, dnsServer: v.dnsServer || null, exit: v.exit });
      networkForm.reset();
      poller.now();
    });
    bindForm(connectorForm, async v => {
      const answer = await post('/api/v1/connectors', { network: v.network, name: v.name || null, location: v.location || null });
      connectorForm.reset();
      showProvisioned(once, 'Connector', answer);
      poller.now();
    });

    // "Provision connector" of a network: pick that network in the form and take the operator there.
    container.addEventListener('click', event => {
      const button = event.target.closest('button[data-act]');
      if (!button) return;
      const network = button.dataset.network;
      if (button.dataset.act === 'provision') {
        const select = connectorForm.elements.network;
        if (![...select.options].some(o => o.value === network)) {
          fillSelect(select, [{ value: network }], '');
        }
        select.value = network;
        connectorForm.scrollIntoView({ block: 'center' });
        connectorForm.elements.name.focus();
      } else if (button.dataset.act === 'edit-network') {
        const n = known.get(network);
        if (n) editSettings(n);
      } else if (button.dataset.act === 'delete-network') {
        act(button, async () => {
          await del(`/api/v1/networks/${seg(network)}`);
          if (editing === network) {
            editor?.close(false);
            editing = null;
          }
          poller.now();
        });
      }
    });

    const poller = startPolling(async () => {
      // Three calls for the whole page (not two per network): the lists are grouped by network here.
      const [networks, connectors, resources] = await Promise.all([
        get('/api/v1/networks'), get('/api/v1/connectors'), get('/api/v1/resources'),
      ]);
      known = new Map(networks.map(n => [n.name, n]));
      fillSelect(connectorForm.elements.network, networks.map(n => ({ value: n.name })), 'Create a network first');
      renderNetworkSections(container, networks, connectors, resources);
    });
    return poller;
  }

  function renderNetworkSections(container, networks, connectors, resources) {
    const sections = new Map([...container.querySelectorAll(':scope > section.network')].map(s => [s.dataset.network, s]));
    let previous = null;
    for (const n of networks) {
      let section = sections.get(n.name);
      sections.delete(n.name);
      if (!section) {
        const holder = document.createElement('div');
        holder.innerHTML = networkSectionHtml(n.name);
        section = holder.firstElementChild;
      }
      const next = previous ? previous.nextSibling : container.firstChild;
      if (section !== next) container.insertBefore(section, next);
      previous = section;
      section.querySelector('[data-field=settings]').textContent = networkSettingsText(n);
      const [connectorBody, resourceBody] = section.querySelectorAll('tbody');
      syncRows(connectorBody, connectors.filter(c => c.network === n.name), c => c.name, connectorCells,
        c => ({ 'data-connector': c.name, class: `connector ${c.state === 'online' ? 'is-online' : 'is-offline'}` }),
        'No connectors yet: provision one to reach this network.');
      syncRows(resourceBody, resources.filter(r => r.network === n.name), r => r.id, networkResourceCells,
        r => ({ 'data-resource': r.name, class: r.warning ? 'has-warning' : '' }), 'No resources yet.');
    }
    for (const section of sections.values()) section.remove();
    const empty = container.querySelector(':scope > .empty-state');
    if (networks.length === 0 && !empty) {
      container.insertAdjacentHTML('beforeend', '<p class="empty-state">No networks yet: create one above.</p>');
    } else if (networks.length > 0 && empty) {
      empty.remove();
    }
  }

  // ---- Daemon detail (connector or relay): fields, history, events

  /**
   * The daemon's fields as a definition list, updated entry by entry: only what changed is rewritten (the uptime ticks
   * every poll; the rest can stay selected for copying).
   */
  function syncDetails(container, rows) {
    let dl = container.querySelector(':scope > dl.details');
    if (!dl || dl.children.length !== rows.length) {
      container._html = null;
      container.innerHTML = `<dl class="details">${rows.map(() => '<div><dt></dt><dd></dd></div>').join('')}</dl>`;
      dl = container.firstElementChild;
    }
    rows.forEach(([term, html, fieldName], i) => {
      const entry = dl.children[i];
      if (fieldName && entry.dataset.field !== fieldName) entry.dataset.field = fieldName;
      if (entry.firstElementChild.textContent !== term) entry.firstElementChild.textContent = term;
      swap(entry.lastElementChild, html);
    });
  }

  function historyCells(h) {
    return [{ html: when(h.at), field: 'at' }, { html: stateBadge(h.state), field: 'state' }, { html: orDash(h.reason), field: 'reason' }];
  }

  function eventCells(e) {
    return [{ html: when(e.at), field: 'at' }, { html: `<code>${esc(e.kind)}</code>`, field: 'kind' }, { html: esc(e.message), field: 'message' }];
  }

  function connectorDetailRows(c) {
    const stun = c.stun ?? {};
    return [
      ['Network', esc(c.network), 'network'],
      ['State', `${stateBadge(c.state)} ${esc(sinceText(c.state, c.uptimeSeconds, c.downtimeSeconds))}`, 'state'],
      [c.state === 'online' ? 'Online since' : 'Offline since', when(c.state === 'online' ? c.onlineSince : c.offlineSince), 'since'],
      ['Time offset', offsetHtml(c.timeOffsetMs, c.timeOffsetStatus), 'offset'],
      ['STUN status', stunHtml({ status: stun.status }), 'stun-status'],
      ['STUN mapped address', orDash(stun.mappedAddress), 'stun-mapped'],
      ['STUN relays', list(stun.relays), 'stun-relays'],
      ['STUN error', orDash(stun.error), 'stun-error'],
      ['STUN checked', when(stun.at), 'stun-at'],
      ['Hostname', orDash(c.hostname), 'hostname'],
      ['Public IP', orDash(c.publicIp), 'public-ip'],
      ['Private IPs', list(c.privateIps), 'private-ips'],
      ['Version', orDash(c.version), 'version'],
      ['Last seen', whenAgo(c.lastSeen), 'last-seen'],
      ['Location', orDash(c.location), 'location'],
      ['Clients', orDash(c.clients), 'clients'],
      ['Flows', orDash(c.flows), 'flows'],
      ['Created', when(c.createdAt), 'created'],
      ['Id', `<code>${esc(c.id)}</code>`, 'id'],
    ];
  }

  function relayDetailRows(r) {
    const up = r.state === 'online' ? secondsSince(r.onlineSince) : null;
    const down = r.state === 'online' ? null : secondsSince(r.offlineSince);
    return [
      ['State', `${stateBadge(r.state)} ${esc(sinceText(r.state, up, down))}`, 'state'],
      [r.state === 'online' ? 'Online since' : 'Offline since', when(r.state === 'online' ? r.onlineSince : r.offlineSince), 'since'],
      ['Time offset', offsetHtml(r.timeOffsetMs, null), 'offset'],
      ['TCP endpoints', list(r.tcpEndpoints), 'tcp-endpoints'],
      ['STUN endpoints', list(r.stunEndpoints), 'stun-endpoints'],
      ['Peers', esc(r.peers), 'peers'],
      ['Traffic in / out', `${esc(bytes(r.bytesIn))} / ${esc(bytes(r.bytesOut))}`, 'bytes'],
      ['Packets in / out', `${esc(r.packetsIn)} / ${esc(r.packetsOut)}`, 'packets'],
      ['Packets per second', esc(Number(r.packetsPerSecond ?? 0).toFixed(1)), 'pps'],
      ['Refused', esc(r.refused), 'refused'],
      ['Hostname', orDash(r.hostname), 'hostname'],
      ['Public IP', orDash(r.publicIp), 'public-ip'],
      ['Version', orDash(r.version), 'version'],
      ['Last seen', whenAgo(r.lastSeen), 'last-seen'],
      ['Location', orDash(r.location), 'location'],
      ['Id', `<code>${esc(r.id)}</code>`, 'id'],
    ];
  }

  /**
   * #/connectors/NAME and #/relays/NAME: everything the controller keeps about one daemon, refreshed while shown.
   * kind.checks: connectors also list what they found checking each resource of their network.
   */
  function viewDaemon(root, kind, name) {
    const isConnector = kind === 'connector';
    const base = isConnector ? '/api/v1/connectors' : '/api/v1/relays';
    const back = isConnector ? '<a href="#/networks">Networks</a>' : '<a href="#/relays">Relays</a>';
    const title = isConnector ? 'Connector' : 'Relay';
    root.innerHTML = `<p class="crumbs">${back} <span aria-hidden="true">›</span> <span data-field="network"></span></p>
      ${viewHead(`${title} ${name}`)}
      <div class="section-actions"><button type="button" class="danger" data-act="remove">Remove ${kind}</button></div>
      <div class="detail" aria-live="off"></div>
      ${isConnector ? table('connector-checks', 'Resource checks', ['Resource', 'Status', 'Detail']) : ''}
      ${table(`${kind}-history`, 'History', ['At', 'State', 'Reason'])}
      ${table(`${kind}-events`, 'Events', ['At', 'Kind', 'Message'])}`;
    const detail = root.querySelector('.detail');
    const crumb = root.querySelector('[data-field=network]');
    const bodies = [...root.querySelectorAll('tbody')];
    const [checks, history, events] = isConnector ? bodies : [null, ...bodies];

    root.querySelector('[data-act=remove]').addEventListener('click', event => {
      // Removal ends the daemon's session and voids its tokens: a new one needs provisioning again.
      if (!confirm(`Remove ${kind} ${name}? Its tokens stop working and it is disconnected.`)) return;
      act(event.currentTarget, async () => {
        await del(`${base}/${seg(name)}`);
        location.hash = isConnector ? '#/networks' : '#/relays';
      });
    });

    return startPolling(async () => {
      let d;
      try {
        d = await get(`${base}/${seg(name)}`);
      } catch (e) {
        if (e.status === 404) {
          swap(detail, `<p class="empty-state">${esc(e.message)}.</p>`);
          return;
        }
        throw e;
      }
      crumb.textContent = isConnector ? d.network : name;
      syncDetails(detail, isConnector ? connectorDetailRows(d) : relayDetailRows(d));
      if (checks) {
        syncRows(checks, d.resources ?? [], r => r.resource, r => [
          { html: esc(r.resource), field: 'resource' },
          { html: badge(r.status, `check-${r.status}`), field: 'status' },
          { html: orDash(r.detail), field: 'detail' },
        ], r => ({ 'data-resource': r.resource }), d.state === 'online' ? 'No checks reported yet.' : 'No checks while offline.');
      }
      syncRows(history, d.history ?? [], h => `${h.at}|${h.state}`, historyCells, null, 'No state changes yet.');
      syncRows(events, d.events ?? [], e => `${e.at}|${e.kind}|${e.message}`, eventCells, e => ({ 'data-kind': e.kind }), 'No events yet.');
    });
  }

  // ---- Relays

  function relayCells(r) {
    const up = r.state === 'online' ? secondsSince(r.onlineSince) : null;
    const down = r.state === 'online' ? null : secondsSince(r.offlineSince);
    const endpoints = [
      r.tcpEndpoints?.length ? `TCP ${r.tcpEndpoints.map(esc).join(', ')}` : '',
      r.stunEndpoints?.length ? `STUN ${r.stunEndpoints.map(esc).join(', ')}` : '',
    ].filter(Boolean);
    return [
      { html: routeLink('relays', r.name), field: 'name' },
      { html: stateBadge(r.state), field: 'state' },
      { html: esc(sinceText(r.state, up, down)), field: 'since', live: 'off' },
      { html: orDash(r.location), field: 'location' },
      { html: endpoints.length ? endpoints.join('<br>') : '<span class="muted">—</span>', field: 'endpoints' },
      { html: esc(r.peers), field: 'peers', cls: 'num' },
      { html: `↓ ${esc(bytes(r.bytesIn))} ↑ ${esc(bytes(r.bytesOut))}`, field: 'bytes', cls: 'num' },
      { html: `${esc(Number(r.packetsPerSecond ?? 0).toFixed(1))}`, field: 'pps', cls: 'num' },
      { html: esc(r.refused), field: 'refused', cls: 'num' },
      { html: offsetHtml(r.timeOffsetMs, null), field: 'offset', cls: 'num' },
      { html: orDash(r.version), field: 'version' },
      { html: `<button type="button" class="secondary" data-act="remove" data-name="${esc(r.name)}">Remove</button>`, field: 'actions' },
    ];
  }

  function viewRelays(root) {
    root.innerHTML = `${viewHead('Relays', 'Relays carry traffic when a client and a connector cannot reach each other directly.')}
      <div class="once-area"></div>
      <div class="forms">
        ${formHtml('form-relay', 'Provision relay', [
          field({ id: 'rel-name', label: 'Name (optional)', name: 'name', placeholder: 'generated when empty' }),
          field({ id: 'rel-location', label: 'Location (optional)', name: 'location', placeholder: '52.37,4.90 or eu-west', keys: 'a location' }),
        ], 'Provision')}
      </div>
      ${table('relays-table', 'Relays', ['Name', 'State', 'Since', 'Location', 'Endpoints', 'Peers', 'Traffic', 'Packets/s', 'Refused', 'Time offset', 'Version', ''])}`;
    const once = root.querySelector('.once-area');
    const form = root.querySelector('[data-testid=form-relay]');
    const body = root.querySelector('tbody');
    bindOnceArea(once);
    bindForm(form, async v => {
      const answer = await post('/api/v1/relays', { name: v.name || null, location: v.location || null });
      form.reset();
      showProvisioned(once, 'Relay', answer);
      poller.now();
    });
    body.addEventListener('click', event => {
      const button = event.target.closest('button[data-act=remove]');
      if (!button) return;
      const name = button.dataset.name;
      if (!confirm(`Remove relay ${name}? Its tokens stop working and it is disconnected.`)) return;
      act(button, async () => { await del(`/api/v1/relays/${seg(name)}`); poller.now(); });
    });
    const poller = startPolling(async () => {
      const relays = await get('/api/v1/relays');
      syncRows(body, relays, r => r.name, relayCells, r => ({ 'data-relay': r.name }), 'No relays yet.');
    });
    return poller;
  }

  // ---- Resources

  function viewResources(root) {
    root.innerHTML = `${viewHead('Resources', 'What clients may reach through a network\'s connectors: a DNS name, a wildcard, an IP address or a CIDR, and its ports.')}
      ${statusLineHtml()}
      <div class="forms">
        ${formHtml('form-resource', 'Add resource', [
          field({ id: 'res-network', label: 'Network', name: 'network', select: true, keys: 'network is required' }),
          field({ id: 'res-address', label: 'Address', name: 'address', placeholder: 'db.internal, *.corp.internal, 10.0.0.0/24', keys: 'address' }),
          field({ id: 'res-name', label: 'Name (optional)', name: 'name', placeholder: 'derived from the address' }),
          field({ id: 'res-tcp', label: 'TCP ports', name: 'tcp', placeholder: 'all, none, 22,8000-8100' }),
          field({ id: 'res-udp', label: 'UDP ports', name: 'udp', placeholder: 'all, none, 53' }),
        ], 'Add resource')}
      </div>
      <div class="edit-area"></div>
      ${table('resources-table', 'Resources', ['Name', 'Network', 'Address', 'Kind', 'TCP', 'UDP', 'Warning', 'Created', ''])}`;
    const form = root.querySelector('[data-testid=form-resource]');
    const editArea = root.querySelector('.edit-area');
    const body = root.querySelector('tbody');
    let known = new Map(); // id → resource, as the last poll saw them: what an edit form starts from
    let editor = null, editing = null;
    const editButton = id => body.querySelector(`button[data-act=edit][data-id="${CSS.escape(id)}"]`);
    bindForm(form, async v => {
      // Empty port fields are left out: the API then allows all ports, or only the other protocol when one is given.
      await post('/api/v1/resources', { network: v.network, address: v.address, name: v.name || null, tcp: v.tcp || null, udp: v.udp || null });
      form.reset();
      poller.now();
    });

    // One edit form at a time, above the table: the rows below keep refreshing, the form keeps what is typed in it.
    function edit(r) {
      editor?.close(false);
      say(root, '');
      notice('');
      const original = { name: r.name, address: r.address, tcp: r.tcp, udp: r.udp };
      editor = openEditor(editArea, editFormHtml('form-resource-edit', `Edit resource ${r.name}`, [
        field({ id: 'rese-name', label: 'Name', name: 'name', required: true }),
        field({ id: 'rese-address', label: 'Address', name: 'address', placeholder: 'db.internal, *.corp.internal, 10.0.0.0/24', keys: 'address' }),
        field({ id: 'rese-tcp', label: 'TCP ports', name: 'tcp', placeholder: 'all, none, 22,8000-8100', keys: 'a resource must allow' }),
        field({ id: 'rese-udp', label: 'UDP ports', name: 'udp', placeholder: 'all, none, 53' }),
      ]), async (v, editForm, self) => {
        if (v.name === '') {
          fieldError(editForm.elements.name, 'a resource needs a name');
          return;
        }
        const changes = changedFields(v, original);
        if (Object.keys(changes).length === 0) {
          self.close();
          say(root, `Nothing changed in resource ${r.name}.`);
          return;
        }
        // Refused: the form stays open with the message next to its field. Saved: it closes and the table catches up.
        const saved = await patch(`/api/v1/resources/${seg(r.id)}`, changes);
        self.close(false);
        editing = null;
        say(root, `Resource ${saved?.name ?? r.name} saved.`);
        await poller.now();
        // After the refresh: a renamed row's buttons were drawn anew with the new name.
        editButton(r.id)?.focus();
      }, () => { editing = null; editButton(r.id)?.focus(); });
      editing = r.id;
      for (const [name, value] of Object.entries(original)) editor.form.elements[name].value = value;
      editor.form.elements.name.focus();
    }

    body.addEventListener('click', event => {
      const button = event.target.closest('button[data-act]');
      if (!button) return;
      const id = button.dataset.id;
      if (button.dataset.act === 'edit') {
        const r = known.get(id);
        if (r) edit(r);
      } else if (button.dataset.act === 'remove') {
        act(button, async () => {
          await del(`/api/v1/resources/${seg(id)}`);
          if (editing === id) {
            editor?.close(false);
            editing = null;
          }
          poller.now();
        });
      }
    });
    const poller = startPolling(async () => {
      const [networks, resources] = await Promise.all([get('/api/v1/networks'), get('/api/v1/resources')]);
      known = new Map(resources.map(r => [r.id, r]));
      fillSelect(form.elements.network, networks.map(n => ({ value: n.name })), 'Create a network first');
      syncRows(body, resources, r => r.id, r => [
        { html: esc(r.name), field: 'name' },
        { html: esc(r.network), field: 'network' },
        { html: `<code>${esc(r.address)}</code>`, field: 'address' },
        { html: esc(r.kind), field: 'kind' },
        { html: esc(r.tcp), field: 'tcp' },
        { html: esc(r.udp), field: 'udp' },
        { html: warningHtml(r.warning), field: 'warning' },
        { html: when(r.createdAt), field: 'created' },
        {
          html: `<button type="button" class="secondary" data-act="edit" data-id="${esc(r.id)}" aria-label="Edit resource ${esc(r.name)}">Edit</button> ` +
            `<button type="button" class="secondary" data-act="remove" data-id="${esc(r.id)}" aria-label="Remove resource ${esc(r.name)}">Remove</button>`,
          field: 'actions',
        },
      ], r => ({ 'data-resource': r.name, class: r.warning ? 'has-warning' : '' }), 'No resources yet.');
    });
    return poller;
  }

  // ---- Policies

  function viewPolicies(root) {
    root.innerHTML = `${viewHead('Policies', 'A grant lets a group\'s users, or a service account, reach one resource.')}
      <div class="forms">
        ${formHtml('form-policy', 'Grant access', [
          field({ id: 'pol-resource', label: 'Resource', name: 'resource', select: true }),
          field({ id: 'pol-kind', label: 'Grantee type', name: 'kind', select: true }),
          field({ id: 'pol-grantee', label: 'Grantee', name: 'grantee', select: true, keys: 'name exactly one grantee' }),
        ], 'Grant')}
      </div>
      ${table('policies-table', 'Grants', ['Resource', 'Network', 'Grantee', 'Created', ''])}`;
    const form = root.querySelector('[data-testid=form-policy]');
    const body = root.querySelector('tbody');
    const kind = form.elements.kind;
    fillSelect(kind, [{ value: 'group', label: 'Group' }, { value: 'service-account', label: 'Service account' }], '');
    let groups = [], accounts = [];
    const fillGrantees = () => {
      const names = kind.value === 'group' ? groups.map(g => g.name) : accounts.map(a => a.name);
      fillSelect(form.elements.grantee, names.map(n => ({ value: n })), kind.value === 'group' ? 'No groups yet' : 'No service accounts yet');
    };
    kind.addEventListener('change', fillGrantees);
    bindForm(form, async v => {
      const grantee = v.grantee || null;
      await post('/api/v1/policies', kind.value === 'group'
        ? { resource: v.resource, group: grantee }
        : { resource: v.resource, serviceAccount: grantee });
      poller.now();
    });
    body.addEventListener('click', event => {
      const button = event.target.closest('button[data-act=revoke]');
      if (!button) return;
      act(button, async () => { await del(`/api/v1/policies/${seg(button.dataset.id)}`); poller.now(); });
    });
    const poller = startPolling(async () => {
      let resources, policies;
      [resources, groups, accounts, policies] = await Promise.all([
        get('/api/v1/resources'), get('/api/v1/groups'), get('/api/v1/service-accounts'), get('/api/v1/policies'),
      ]);
      fillSelect(form.elements.resource, resources.map(r => ({ value: r.name, label: `${r.name} (${r.network})` })), 'Add a resource first');
      fillGrantees();
      syncRows(body, policies, p => p.id, p => [
        { html: esc(p.resource), field: 'resource' },
        { html: esc(p.network), field: 'network' },
        { html: p.group ? `group <strong>${esc(p.group)}</strong>` : `service account <strong>${esc(p.serviceAccount)}</strong>`, field: 'grantee' },
        { html: when(p.createdAt), field: 'created' },
        { html: `<button type="button" class="secondary" data-act="revoke" data-id="${esc(p.id)}">Revoke</button>`, field: 'actions' },
      ], p => ({ 'data-policy': p.id, 'data-resource': p.resource }), 'No grants yet.');
    });
    return poller;
  }

  // ---- Users & groups

  function memberChips(g) {
    if (!g.members.length) return '<span class="muted">no members</span>';
    return `<ul class="chips">${g.members.map(u => `<li data-member="${esc(u)}">${esc(u)}` +
      ` <button type="button" class="chip-x" data-act="remove-member" data-group="${esc(g.name)}" data-user="${esc(u)}" aria-label="Remove ${esc(u)} from ${esc(g.name)}">×</button></li>`).join('')}</ul>`;
  }

  function addMemberControl(g, users) {
    const candidates = users.map(u => u.name).filter(u => !g.members.includes(u));
    if (!candidates.length) return '<span class="muted">every user is a member</span>';
    const id = `add-${g.name}`;
    return `<div class="inline"><label for="${esc(id)}" class="sr-only">User to add to ${esc(g.name)}</label>` +
      `<select id="${esc(id)}">${candidates.map(u => `<option value="${esc(u)}">${esc(u)}</option>`).join('')}</select>` +
      ` <button type="button" data-act="add-member" data-group="${esc(g.name)}" data-select="${esc(id)}">Add</button></div>`;
  }

  function viewUsers(root) {
    root.innerHTML = `${viewHead('Users & groups', 'Users sign in with a client; policies grant resources to the groups they are in.')}
      ${statusLineHtml()}
      <div class="forms">
        ${formHtml('form-user', 'New user', [
          field({ id: 'user-name', label: 'Name', name: 'name', required: true }),
          field({ id: 'user-password', label: 'Password', name: 'password', type: 'password', autocomplete: 'new-password', required: true, keys: 'password', hint: 'At least 8 characters.' }),
        ], 'Create user')}
        ${formHtml('form-group', 'New group', [
          field({ id: 'group-name', label: 'Name', name: 'name', required: true }),
        ], 'Create group')}
      </div>
      <div class="edit-area"></div>
      ${table('users-table', 'Users', ['Name', 'Groups', 'Created', ''])}
      ${table('groups-table', 'Groups', ['Name', 'Members', 'Add member', 'Created', ''])}`;
    const userForm = root.querySelector('[data-testid=form-user]');
    const groupForm = root.querySelector('[data-testid=form-group]');
    const [userBody, groupBody] = root.querySelectorAll('tbody');
    const editArea = root.querySelector('.edit-area');
    let editor = null, editing = null;
    const passwordButton = user => userBody.querySelector(`button[data-act=set-password][data-user="${CSS.escape(user)}"]`);

    // "Set password" (a forgotten password reset by an operator): one form above the users table.
    function setPassword(user) {
      editor?.close(false);
      say(root, '');
      notice('');
      editor = openEditor(editArea, editFormHtml('form-user-password', `Set password of ${user}`, [
        // The account the password is for, for password managers (hidden, and not sent).
        `<input type="text" autocomplete="username" value="${esc(user)}" hidden readonly>`,
        field({ id: 'userpw-password', label: 'New password', name: 'password', type: 'password', autocomplete: 'new-password', required: true, keys: 'password', hint: 'At least 8 characters.' }),
      ]), async (_values, form, self) => {
        // As typed: a password is not trimmed (the form values are).
        await patch(`/api/v1/users/${seg(user)}`, { password: form.elements.password.value });
        self.close();
        say(root, `Password of ${user} set.`);
      }, () => { editing = null; passwordButton(user)?.focus(); });
      editing = user;
      editor.form.elements.password.focus();
    }

    bindForm(userForm, async v => {
      await post('/api/v1/users', { name: v.name, password: v.password });
      userForm.reset();
      poller.now();
    });
    bindForm(groupForm, async v => {
      await post('/api/v1/groups', { name: v.name });
      groupForm.reset();
      poller.now();
    });
    root.addEventListener('click', event => {
      const button = event.target.closest('tbody button[data-act]');
      if (!button) return;
      const { act: action, group, user } = button.dataset;
      if (action === 'set-password') {
        setPassword(user);
        return;
      }
      act(button, async () => {
        if (action === 'remove-user') {
          await del(`/api/v1/users/${seg(user)}`);
          if (editing === user) {
            editor?.close(false);
            editing = null;
          }
        }
        if (action === 'delete-group') await del(`/api/v1/groups/${seg(group)}`);
        if (action === 'remove-member') await del(`/api/v1/groups/${seg(group)}/members/${seg(user)}`);
        if (action === 'add-member') {
          const chosen = document.getElementById(button.dataset.select)?.value;
          if (chosen) await post(`/api/v1/groups/${seg(group)}/members`, { user: chosen });
        }
        poller.now();
      });
    });
    const poller = startPolling(async () => {
      const [users, groups] = await Promise.all([get('/api/v1/users'), get('/api/v1/groups')]);
      syncRows(userBody, users, u => u.id, u => [
        { html: esc(u.name), field: 'name' },
        { html: list(u.groups), field: 'groups' },
        { html: when(u.createdAt), field: 'created' },
        {
          html: `<button type="button" class="secondary" data-act="set-password" data-user="${esc(u.name)}" aria-label="Set password of ${esc(u.name)}">Set password</button> ` +
            `<button type="button" class="secondary" data-act="remove-user" data-user="${esc(u.name)}" aria-label="Remove user ${esc(u.name)}">Remove</button>`,
          field: 'actions',
        },
      ], u => ({ 'data-user': u.name }), 'No users yet.');
      syncRows(groupBody, groups, g => g.id, g => [
        { html: esc(g.name), field: 'name' },
        { html: memberChips(g), field: 'members' },
        { html: addMemberControl(g, users), field: 'add-member' },
        { html: when(g.createdAt), field: 'created' },
        { html: `<button type="button" class="secondary" data-act="delete-group" data-group="${esc(g.name)}" aria-label="Delete group ${esc(g.name)}">Delete</button>`, field: 'actions' },
      ], g => ({ 'data-group': g.name }), 'No groups yet.');
    });
    return poller;
  }

  // ---- Service accounts

  function viewServiceAccounts(root) {
    root.innerHTML = `${viewHead('Service accounts', 'Headless client identities (servers, CI jobs) that sign in with a key instead of a password.')}
      <div class="once-area"></div>
      <div class="forms">
        ${formHtml('form-service-account', 'New service account', [
          field({ id: 'sa-name', label: 'Name', name: 'name', required: true }),
        ], 'Create service account')}
      </div>
      ${table('service-accounts-table', 'Service accounts', ['Name', 'Created', ''])}`;
    const once = root.querySelector('.once-area');
    const form = root.querySelector('[data-testid=form-service-account]');
    const body = root.querySelector('tbody');
    bindOnceArea(once);
    bindForm(form, async v => {
      const answer = await post('/api/v1/service-accounts', { name: v.name });
      form.reset();
      showServiceAccountKey(once, answer);
      poller.now();
    });
    body.addEventListener('click', event => {
      const button = event.target.closest('button[data-act=remove]');
      if (!button) return;
      act(button, async () => { await del(`/api/v1/service-accounts/${seg(button.dataset.name)}`); poller.now(); });
    });
    const poller = startPolling(async () => {
      const accounts = await get('/api/v1/service-accounts');
      syncRows(body, accounts, a => a.id, a => [
        { html: esc(a.name), field: 'name' },
        { html: when(a.createdAt), field: 'created' },
        { html: `<button type="button" class="secondary" data-act="remove" data-name="${esc(a.name)}" aria-label="Remove service account ${esc(a.name)}">Remove</button>`, field: 'actions' },
      ], a => ({ 'data-service-account': a.name }), 'No service accounts yet.');
    });
    return poller;
  }

  // ---- Devices

  function pathHtml(p) {
    const kind = p.kind === 'direct' ? 'direct' : 'relayed';
    const extra = [];
    if (p.remote) extra.push(`${kind === 'direct' ? 'to' : 'via'} <code>${esc(p.remote)}</code>`);
    if (kind === 'relayed' && p.directFailure) extra.push(`direct failed: ${esc(p.directFailure)}`);
    if (p.migrations) extra.push(`${esc(p.migrations)} migration${p.migrations === 1 ? '' : 's'}`);
    return `<li data-path="${esc(p.connector)}"><strong>${esc(p.connector)}</strong> ${badge(kind, `path-${kind}`)}` +
      ` <span class="num" data-field="rtt">${esc(ms(p.rttMs))}</span>` +
      ` <span class="num" data-field="traffic">↑ ${esc(bytes(p.bytesSent))} ↓ ${esc(bytes(p.bytesReceived))}</span>` +
      (extra.length ? ` <span class="muted">${extra.join(' · ')}</span>` : '') + '</li>';
  }

  function viewDevices(root) {
    root.innerHTML = `${viewHead('Devices', 'Signed-in client devices and the path each takes to the connectors it uses.')}
      ${table('devices-table', 'Devices', ['Device', 'Owner', 'Connected', 'Paths', 'Signed in', 'Session expires', ''])}`;
    const body = root.querySelector('tbody');
    body.addEventListener('click', event => {
      const button = event.target.closest('button[data-act=remove]');
      if (!button) return;
      act(button, async () => { await del(`/api/v1/devices/${seg(button.dataset.id)}`); poller.now(); });
    });
    const poller = startPolling(async () => {
      const devices = await get('/api/v1/devices');
      syncRows(body, devices, d => d.id, d => [
        { html: `${esc(d.name)} <span class="muted"><code>${esc(d.id)}</code></span>`, field: 'name' },
        { html: `${esc(d.owner)} <span class="muted">(${esc(d.ownerKind)})</span>`, field: 'owner' },
        { html: badge(d.online ? 'connected' : 'not connected', d.online ? 'state-online' : 'state-offline'), field: 'connected' },
        { html: d.paths?.length ? `<ul class="paths">${d.paths.map(pathHtml).join('')}</ul>` : '<span class="muted">—</span>', field: 'paths' },
        { html: when(d.createdAt), field: 'created' },
        { html: when(d.sessionExpiresAt), field: 'expires' },
        { html: `<button type="button" class="secondary" data-act="remove" data-id="${esc(d.id)}" aria-label="Remove device ${esc(d.name)}">Remove</button>`, field: 'actions' },
      ], d => ({ 'data-device': d.id, 'data-owner': d.owner }), 'No devices have signed in yet.');
    });
    return poller;
  }

  // ---- Audit log

  function viewAudit(root) {
    root.innerHTML = `${viewHead('Audit log', 'Every change, newest first: who made it and to what.')}
      ${table('audit-table', 'Latest changes', ['At', 'Actor', 'Action', 'Target'])}`;
    const body = root.querySelector('tbody');
    return startPolling(async () => {
      const entries = await get('/api/v1/audit?limit=200');
      syncRows(body, entries, a => `${a.at}|${a.actor}|${a.action}|${a.target}`, a => [
        { html: when(a.at), field: 'at' },
        { html: esc(a.actor), field: 'actor' },
        { html: `<code>${esc(a.action)}</code>`, field: 'action' },
        { html: esc(a.target), field: 'target' },
      ], a => ({ 'data-action': a.action }), 'Nothing has been changed yet.');
    });
  }

  // ---------------------------------------------------------------- routing

  const routes = [
    { pattern: /^#\/networks$/, nav: 'networks', title: 'Networks', view: viewNetworks },
    { pattern: /^#\/connectors\/([^/]+)$/, nav: 'networks', title: 'Connector', view: (root, name) => viewDaemon(root, 'connector', name) },
    { pattern: /^#\/resources$/, nav: 'resources', title: 'Resources', view: viewResources },
    { pattern: /^#\/policies$/, nav: 'policies', title: 'Policies', view: viewPolicies },
    { pattern: /^#\/users$/, nav: 'users', title: 'Users & groups', view: viewUsers },
    { pattern: /^#\/service-accounts$/, nav: 'service-accounts', title: 'Service accounts', view: viewServiceAccounts },
    { pattern: /^#\/devices$/, nav: 'devices', title: 'Devices', view: viewDevices },
    { pattern: /^#\/relays$/, nav: 'relays', title: 'Relays', view: viewRelays },
    { pattern: /^#\/relays\/([^/]+)$/, nav: 'relays', title: 'Relay', view: (root, name) => viewDaemon(root, 'relay', name) },
    { pattern: /^#\/audit$/, nav: 'audit', title: 'Audit log', view: viewAudit },
  ];

  let current = null;

  function route(moveFocus) {
    const hash = location.hash;
    // "#view" and other plain anchors (the skip link) are not routes: leave the shown view alone (on a fresh load there
    // is none yet, so the default route is shown).
    if (current && hash && !hash.startsWith('#/')) return;
    let match = null, params = [];
    const entry = routes.find(r => (match = r.pattern.exec(hash)));
    if (entry) {
      try { params = match.slice(1).map(decodeURIComponent); } catch { params = null; }
    }
    if (!entry || params === null) {
      location.replace('#/networks');
      return;
    }
    current?.stop();
    notice('');
    setPollStatus('');
    // A fresh element per view: listeners of the view before go with it.
    const root = document.createElement('div');
    root.className = 'view';
    document.getElementById('view').replaceChildren(root);
    for (const link of document.querySelectorAll('nav a[data-nav]')) {
      if (link.dataset.nav === entry.nav) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    document.title = `${entry.title}${params[0] ? ` ${params[0]}` : ''} · Ferry console`;
    current = entry.view(root, ...params);
    if (moveFocus) root.querySelector('h1')?.focus();
  }

  function start() {
    // The server fills these in too; setting them here keeps the page right even if that ever changes.
    const token = document.querySelector('form.logout input[name=csrf]');
    if (token) token.value = csrf;
    const who = document.getElementById('operator-name');
    if (who && operatorName) who.textContent = operatorName;
    window.addEventListener('hashchange', () => route(true));
    // Polls pause in a hidden tab; coming back refreshes at once instead of showing stale state for up to two seconds.
    document.addEventListener('visibilitychange', () => { if (!document.hidden) current?.now(); });
    route(false);
  }

  start();
})();
