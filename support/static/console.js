/* ChargeDesk agent console: the queue and one ticket, on top of /api/v1/support.
 *
 * Signed in by the session cookie; every write sends the CSRF token from the page's meta
 * tag. Text from drivers and the database is only ever set as textContent. SLA countdowns
 * tick every second against the server's clock (the API answers with its "now").
 */
(function () {
  "use strict";

  var root = document.getElementById("console");
  if (!root) return;
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var myId = Number(root.dataset.agentId);
  var role = root.dataset.role;
  var lead = role === "supervisor";
  var state = { tickets: [], selected: null, detail: null, skew: 0, agents: [], teams: [],
                canned: [], busy: false, lastTranscript: "" };

  // ------------------------------------------------------------ helpers

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = value;
      else if (key === "onclick") node.addEventListener("click", value);
      else if (key === "onsubmit") node.addEventListener("submit", value);
      else if (key === "onchange") node.addEventListener("change", value);
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : value);
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function api(method, path, body) {
    var options = { method: method, credentials: "same-origin",
                    headers: { "Accept": "application/json" } };
    if (method !== "GET") options.headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch("/api/v1/support" + path, options).then(function (response) {
      if (response.status === 401) { window.location = "/agent/login"; throw new Error("signed out"); }
      if (response.status === 204) return null;
      return response.json().then(function (data) {
        if (!response.ok) {
          var detail = data && data.detail;
          if (typeof detail !== "string") detail = JSON.stringify(detail);
          throw new Error(detail || ("HTTP " + response.status));
        }
        return data;
      });
    });
  }

  function serverNow() { return Date.now() + state.skew; }
  function noteSkew(now) { if (now) state.skew = Date.parse(now) - Date.now(); }

  function clock(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    return d.toLocaleString("sv-SE", { dateStyle: "short", timeStyle: "short" });
  }

  function countdown(ms) {
    var sign = ms < 0 ? "-" : "";
    var s = Math.floor(Math.abs(ms) / 1000);
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return sign + (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(r).padStart(2, "0");
  }

  var TARGETS = { first_response: "first reply", next_response: "next reply",
                  resolution: "resolution" };

  function slaNodes(sla) {
    var nodes = [];
    Object.keys(TARGETS).forEach(function (target) {
      if (!sla || !sla[target]) return;
      nodes.push(el("span", { "class": "sla", "data-due": sla[target].due_at,
                              "data-state": sla[target].state || "",
                              "data-label": TARGETS[target] }));
    });
    return nodes;
  }

  function tick() {
    document.querySelectorAll("[data-due]").forEach(function (node) {
      var left = Date.parse(node.dataset.due) - serverNow();
      node.textContent = node.dataset.label + (left < 0 ? " overdue " + countdown(-left)
                                                         : " in " + countdown(left)) + " ";
      node.classList.toggle("over", left < 0);
      node.classList.toggle("warn", left >= 0 && (node.dataset.state === "warned" || left < 600000));
    });
  }

  function badge(text, extra) { return el("span", { "class": "badge " + (extra || ""), text: text }); }

  function say(node, text, ok) {
    node.textContent = text;
    node.className = "result " + (ok ? "ok" : "bad");
  }

  // Results go to the element shown now: the pane may have been redrawn since the click.
  function show(id, text, ok) {
    var node = document.getElementById(id);
    if (node) say(node, text, ok);
  }

  // ------------------------------------------------------------ the queue

  var queue = document.getElementById("queue");
  var queueStatus = document.getElementById("queue-status");

  function filters() {
    var query = [];
    var map = { status: "f-status", assignee: "f-assignee", team_id: "f-team",
                priority: "f-priority", channel: "f-channel", supervisor: "f-supervisor" };
    Object.keys(map).forEach(function (name) {
      var node = document.getElementById(map[name]);  // f-supervisor: supervisors only
      var value = node ? node.value : "";
      if (value) query.push(name + "=" + encodeURIComponent(value));
    });
    return "?" + query.join("&");
  }

  function loadQueue() {
    return api("GET", "/tickets" + filters()).then(function (data) {
      noteSkew(data.now);
      state.tickets = data.tickets;
      renderQueue();
    }).catch(function (err) { queueStatus.textContent = "Could not load the queue: " + err.message; });
  }

  function renderQueue() {
    queue.textContent = "";
    queueStatus.textContent = state.tickets.length + " ticket" + (state.tickets.length === 1 ? "" : "s");
    state.tickets.forEach(function (t) {
      var label = "Ticket " + t.id + ": " + (t.driver || "unknown driver") + ", " + t.subject;
      var item = el("li", { tabindex: "0", role: "button", "aria-label": label,
                            "aria-current": t.id === state.selected ? "true" : "false",
                            "data-ticket": t.id }, [
        el("div", { "class": "line1" }, [
          el("strong", { text: "#" + t.id + " " + (t.driver || "unknown driver") }),
          el("span", {}, [badge(t.priority, t.priority), badge(t.status),
                          t.escalated_at ? badge("escalated", "breach") : null])]),
        el("div", { "class": "subject", text: t.subject }),
        el("div", { "class": "muted", text: [t.category, t.intent, t.channel, t.team,
                                             t.assignee ? "→ " + t.assignee : "unassigned"]
                                            .filter(Boolean).join(" · ") }),
        el("div", {}, slaNodes(t.sla))]);
      item.addEventListener("click", function () { select(t.id); });
      item.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(t.id); }
      });
      queue.appendChild(item);
    });
    tick();
  }

  // ------------------------------------------------------------ one ticket

  var pane = document.getElementById("ticket");
  var placeholder = document.getElementById("placeholder");

  function select(id) {
    state.selected = id;
    state.lastTranscript = "";
    renderQueue();
    return loadTicket(true);
  }

  function loadTicket(full) {
    if (!state.selected) return Promise.resolve();
    var id = state.selected;
    return api("GET", "/tickets/" + id).then(function (detail) {
      if (state.selected !== id) return;
      noteSkew(detail.now);
      var key = JSON.stringify(Object.assign({}, detail, { now: null }));
      if (!full && key === state.lastTranscript) return;  // nothing new: leave the forms be
      state.detail = detail;
      state.lastTranscript = key;
      if (full || !pane.querySelector("#reply-text")) renderTicket();
      else refreshTicket();
    }).catch(function (err) {
      pane.hidden = false;
      pane.textContent = "Could not load ticket " + id + ": " + err.message;
    });
  }

  function act(button, promise, done, resultId) {
    if (button) button.disabled = true;
    return promise.then(function (data) {
      if (done) done(data);
      return Promise.all([loadTicket(false), loadQueue()]);
    }).catch(function (err) {
      show(resultId || "action-result", err.message, false);
    }).then(function () { if (button) button.disabled = false; });
  }

  function ticketPath(suffix) { return "/tickets/" + state.selected + suffix; }

  function header(d) {
    var toolbar = el("div", { "class": "toolbar" });
    var mine = d.assignee_id === myId;
    if (d.status !== "resolved" && !mine) {
      toolbar.appendChild(el("button", { type: "button", text: "Claim", onclick: function (e) {
        act(e.target, api("POST", ticketPath("/claim")), function () {
          show("action-result", "You have the ticket.", true);
        });
      } }));
    }
    if (lead && d.status !== "resolved") {
      var who = el("select", { id: "assign-agent", "aria-label": "Assign to" },
        [el("option", { value: "", text: "Unassigned" })].concat(state.agents.map(function (a) {
          return el("option", { value: a.id, text: a.name + (a.online ? " (online)" : ""),
                                selected: a.id === d.assignee_id });
        })));
      toolbar.appendChild(who);
      toolbar.appendChild(el("button", { type: "button", "class": "secondary", text: "Assign",
        onclick: function (e) {
          act(e.target, api("POST", ticketPath("/assign"),
                            { agent_id: who.value ? Number(who.value) : null }));
        } }));
    }
    if (d.status !== "resolved") {
      var team = el("select", { id: "move-team", "aria-label": "Team" },
        state.teams.map(function (t) {
          return el("option", { value: t.id, text: t.name, selected: t.id === d.team_id });
        }));
      toolbar.appendChild(team);
      toolbar.appendChild(el("button", { type: "button", "class": "secondary", text: "Move to team",
        onclick: function (e) {
          act(e.target, api("POST", ticketPath("/assign"), { team_id: Number(team.value) }));
        } }));
    }
    function status(label, body, cls) {
      toolbar.appendChild(el("button", { type: "button", "class": cls || "secondary", text: label,
        onclick: function (e) {
          act(e.target, api("POST", ticketPath("/status"), body), function (r) {
            var text = label + ": done.";
            if (r.delivery_problems && r.delivery_problems.length)
              text += " Not delivered: " + r.delivery_problems.join("; ");
            show("action-result", text, !(r.delivery_problems || []).length);
          });
        } }));
    }
    if (d.status === "open") {
      status("Snooze 1 hour", { status: "snoozed",
                                snooze_until: new Date(serverNow() + 3600000).toISOString() });
    }
    if (d.status === "open" || d.status === "snoozed") {
      status("Hand back to bot", { status: "pending" });
      status("Resolve", { status: "resolved" }, "primary");
    } else {
      status("Reopen", { status: "open" });
    }
    return el("div", {}, [
      el("h2", { text: "#" + d.id + " · " + d.subject }),
      el("p", {}, [badge(d.status), badge(d.priority, d.priority), badge(d.category),
                   badge(d.channel), d.escalated_at ? badge("SLA breached: escalated", "breach") : null,
                   " ", el("span", { "class": "muted",
                     text: (d.team || "no team") + " · " + (d.assignee ? "assigned to " + d.assignee
                                                                       : "unassigned") })]),
      el("p", { id: "ticket-sla" }, slaNodes(d.sla)),
      toolbar,
      el("p", { id: "action-result", "class": "result", role: "status", "aria-live": "polite" })]);
  }

  function transcriptNodes(d) {
    var items = d.transcript.map(function (m) {
      var who = { driver: "Driver", bot: "Assistant", agent: "Agent", system: "Support desk" }[m.from];
      if (m.from === "agent" && m.by) who = "Agent (" + m.by + ")";
      return { at: m.at, node: el("div", { "class": "msg " + m.from }, [
        el("span", { "class": "who", text: who + " · " + m.channel + " · " + clock(m.at) +
                                           (m.intent ? " · " + m.intent : "") }),
        m.text || "",
        m.buttons ? el("span", { "class": "who", text: "[" + m.buttons.join("] [") + "]" }) : null]) };
    });
    d.events.forEach(function (e) {
      if (e.kind === "reply") return;
      var node = e.kind === "note"
        ? el("div", { "class": "msg note" }, [
            el("span", { "class": "who", text: "Internal note · " + e.actor + " · " + clock(e.at) }),
            e.text || ""])
        : el("div", { "class": "msg activity", text: clock(e.at) + " · " + e.actor + " · " +
                                                     (e.text || e.kind) });
      items.push({ at: e.at, node: node });
    });
    items.sort(function (a, b) { return a.at < b.at ? -1 : a.at > b.at ? 1 : 0; });
    return items.map(function (i) { return i.node; });
  }

  function composer(d) {
    var canned = el("select", { id: "canned", "aria-label": "Canned response" },
      [el("option", { value: "", text: "Canned response…" })].concat(state.canned
        .filter(function (c) { return !c.team_id || c.team_id === d.team_id; })
        .map(function (c) {
          return el("option", { value: c.id, text: "[" + c.language + "] " + c.title });
        })));
    var text = el("textarea", { id: "reply-text", "aria-label": "Message" });
    var conversation = null;
    if (d.conversations.length > 1) {
      conversation = el("select", { id: "reply-conversation", "aria-label": "Send on" },
        d.conversations.map(function (c) {
          return el("option", { value: c.id, text: c.channel + " " + c.sender });
        }));
    }
    var result = el("p", { id: "composer-result", "class": "result", role: "status" });
    canned.addEventListener("change", function () {
      if (!canned.value) return;
      api("POST", "/canned-responses/" + canned.value + "/render", { ticket_id: d.id })
        .then(function (r) {
          // The pane may have been redrawn meanwhile: fill the composer shown now.
          var current = document.getElementById("reply-text") || text;
          current.value = r.text;
          current.focus();
          canned.value = "";
        })
        .catch(function (err) { show("composer-result", err.message, false); });
    });
    var open = d.status === "open" || d.status === "snoozed";
    return el("div", { "class": "composer" }, [
      el("div", { "class": "toolbar" }, [canned, conversation]),
      text,
      el("div", { "class": "toolbar" }, [
        el("button", { type: "button", text: "Send reply", disabled: !open, onclick: function (e) {
          text = document.getElementById("reply-text") || text;
          var body = { text: text.value };
          if (conversation) body.conversation_id = Number(conversation.value);
          act(e.target, api("POST", ticketPath("/reply"), body), function (r) {
            (document.getElementById("reply-text") || text).value = "";
            show("composer-result", "Sent on " + r.channel + ".", true);
          }, "composer-result");
        } }),
        el("button", { type: "button", "class": "secondary", text: "Add internal note",
          onclick: function (e) {
            text = document.getElementById("reply-text") || text;
            act(e.target, api("POST", ticketPath("/notes"), { text: text.value }), function () {
              (document.getElementById("reply-text") || text).value = "";
              show("composer-result", "Note added.", true);
            }, "composer-result");
          } })]),
      open ? null : el("p", { "class": "muted", text: "Reopen the ticket to reply." }),
      result]);
  }

  function action(name, params, button, confirmText) {
    act(button, api("POST", ticketPath("/actions/" + name), params), function (r) {
      if (r.status === "pending_approval") {
        show("action-result", "Above your limit (" + r.limit + "): waiting for a supervisor's approval.", true);
      } else {
        show("action-result", (confirmText || name) + ": " + r.outcome + (r.error ? " (" + r.error + ")" : "") +
                              (r.credit_note ? " " + r.credit_note : ""), r.status === "done");
      }
    });
  }

  function facts(pairs) {
    var dl = el("dl", { "class": "facts" });
    pairs.forEach(function (p) {
      if (p[1] === null || p[1] === undefined || p[1] === "") return;
      dl.appendChild(el("dt", { text: p[0] }));
      dl.appendChild(el("dd", { text: String(p[1]) }));
    });
    return dl;
  }

  function table(head, rows) {
    return el("table", {}, [
      el("thead", {}, [el("tr", {}, head.map(function (h) { return el("th", { scope: "col", text: h }); }))]),
      el("tbody", {}, rows.map(function (r) {
        return el("tr", {}, r.map(function (c) {
          return el("td", {}, [c === null || c === undefined ? "" : (typeof c === "object" ? c : String(c))]);
        }));
      }))]);
  }

  function driverCard(d) {
    var ctx = d.driver_context;
    if (!ctx) return el("section", { "class": "card", "aria-label": "Driver" }, [
      el("h3", { text: "Driver" }), el("p", { "class": "muted", text: "Not identified (anonymous)." })]);
    var p = ctx.profile;
    var cards = table(["card", "status", ""], ctx.cards.map(function (c) {
      return [c.id_tag, c.status, c.status === "Accepted"
        ? el("button", { type: "button", "class": "danger", text: "Block card " + c.id_tag,
                         onclick: function (e) { action("block_card", { id_tag: c.id_tag }, e.target, "Block " + c.id_tag); } })
        : ""];
    }));
    var sessions = table(["session", "station", "start", "kWh", "total", "invoice"],
      ctx.sessions.map(function (s) {
        return [s.session_id, s.station_id + " #" + s.connector_id, clock(s.start_at),
                s.energy_kwh, s.total_incl_vat, s.invoice_number];
      }));
    var invoiceOptions = ctx.invoices.filter(function (i) { return i.kind === "invoice"; });
    var invoices = table(["invoice", "issued", "total", "status"], ctx.invoices.map(function (i) {
      return [i.number, i.issue_date, i.total + " " + i.currency, i.status];
    }));
    var credit = null;
    if (invoiceOptions.length) {
      var inv = el("select", { id: "credit-invoice" }, invoiceOptions.map(function (i) {
        return el("option", { value: i.invoice_id, text: i.number + " (creditable " + i.creditable_net + " excl. VAT)" });
      }));
      var amount = el("input", { id: "credit-amount", inputmode: "decimal", size: "8", placeholder: "all" });
      var reason = el("input", { id: "credit-reason", size: "18" });
      credit = el("form", { "class": "inline", onsubmit: function (e) {
        e.preventDefault();
        var params = { invoice_id: Number(inv.value), reason: reason.value };
        if (amount.value.trim()) params.amount = amount.value.trim().replace(",", ".");
        action("credit_note", params, e.submitter, "Credit note");
      } }, [el("label", {}, ["Invoice", inv]),
            el("label", {}, ["Amount excl. VAT (SEK)", amount]),
            el("label", {}, ["Reason", reason]),
            el("button", { type: "submit", text: "Issue credit note" })]);
    }
    var refund = null;
    if (ctx.wallet) {
      var ramount = el("input", { id: "refund-amount", inputmode: "decimal", size: "8" });
      var rreason = el("input", { id: "refund-reason", size: "18" });
      refund = el("form", { "class": "inline", onsubmit: function (e) {
        e.preventDefault();
        action("refund", { amount: ramount.value.trim().replace(",", "."), reason: rreason.value },
               e.submitter, "Refund");
      } }, [el("label", {}, ["Refund (SEK)", ramount]), el("label", {}, ["Reason", rreason]),
            el("button", { type: "submit", text: "Refund to wallet" })]);
    }
    return el("section", { "class": "card", "aria-label": "Driver" }, [
      el("h3", { text: "Driver: " + p.name }),
      facts([["e-mail", p.email], ["phone", p.phone], ["language", p.language],
             ["pays by", p.payment_method], ["customer since", p.since],
             ["wallet", ctx.wallet ? ctx.wallet.balance + " " + ctx.wallet.currency +
                                     " (available " + ctx.wallet.available + ")" : null]]),
      el("h3", { text: "Cards" }), cards,
      el("h3", { text: "Recent sessions" }), sessions,
      el("h3", { text: "Invoices" }), invoices, credit, refund]);
  }

  function stationCard(d) {
    var s = d.station;
    var esc = d.escalation;
    var nodes = [el("h3", { text: "Why it came to us" }),
      esc ? facts([["reason", esc.reason], ["intent", esc.intent],
                   ["details", Object.keys(esc.slots).filter(function (k) {
                     return ["id_tags", "requested_slot", "verified", "language"].indexOf(k) < 0;
                   }).map(function (k) { return k + "=" + JSON.stringify(esc.slots[k]); }).join(", ")]])
          : el("p", { "class": "muted", text: "—" })];
    if (!s) {
      nodes.push(el("p", { "class": "muted", text: "No station named in the conversation." }));
      return el("section", { "class": "card", "aria-label": "Station" }, nodes);
    }
    nodes.push(el("h3", { text: "Station " + s.id }));
    nodes.push(facts([["connected", s.online ? "yes" : "no"], ["site", s.site_id],
                      ["registration", s.registration], ["last heartbeat", clock(s.last_heartbeat_at)],
                      ["model", [s.vendor, s.model, s.firmware].filter(Boolean).join(" ")]]));
    nodes.push(table(["connector", "status", "error", ""], s.connectors.filter(function (c) {
      return c.connector_id !== 0;
    }).map(function (c) {
      return [c.connector_id, c.status, c.error_code,
        el("button", { type: "button", text: "Unlock connector " + c.connector_id,
          onclick: function (e) {
            action("unlock_connector", { station_id: s.id, connector_id: c.connector_id }, e.target,
                   "Unlock connector " + c.connector_id);
          } })];
    })));
    nodes.push(el("div", { "class": "toolbar" }, [
      el("button", { type: "button", "class": "secondary", text: "Soft reset",
        onclick: function (e) { action("soft_reset", { station_id: s.id }, e.target, "Soft reset"); } })]));
    if (s.active_transactions.length) {
      nodes.push(el("h3", { text: "Charging now" }));
      nodes.push(table(["transaction", "connector", "card", "since", ""], s.active_transactions.map(function (t) {
        return [t.transaction_id, t.connector_id, t.id_tag, clock(t.start),
          el("button", { type: "button", "class": "danger", text: "Stop transaction " + t.transaction_id,
            onclick: function (e) { action("remote_stop", { transaction_id: t.transaction_id }, e.target, "Remote stop"); } })];
      })));
    }
    nodes.push(el("h3", { text: "Recent commands" }));
    nodes.push(table(["when", "command", "by", "outcome"], s.commands.map(function (c) {
      var payload = JSON.stringify(c.payload);
      if (payload.length > 60) payload = payload.slice(0, 59) + "…";
      return [clock(c.at), c.action + " " + payload, c.requested_by, c.outcome];
    })));
    if (s.problem_reports.length) {
      nodes.push(el("h3", { text: "Problem reports" }));
      nodes.push(table(["connector", "reports", "what"], s.problem_reports.map(function (r) {
        return [r.connector_id || "all", r.reports, r.description];
      })));
    }
    return el("section", { "class": "card", "aria-label": "Station" }, nodes);
  }

  function otherCard(d) {
    var nodes = [el("h3", { text: "Rating" }),
      el("p", { id: "csat", text: d.csat.score ? d.csat.score + "/5" + (d.csat.comment ? ": " + d.csat.comment : "")
                                              : "state: " + d.csat.state })];
    var others = d.other_tickets.filter(function (t) { return t.status !== "resolved"; });
    if (others.length && d.status !== "resolved") {
      var pick = el("select", { id: "merge-ticket", "aria-label": "Other ticket of this driver" },
        others.map(function (t) {
          return el("option", { value: t.id, text: "#" + t.id + " " + t.channel + ": " + t.subject });
        }));
      nodes.push(el("h3", { text: "Same driver" }));
      nodes.push(el("div", { "class": "toolbar" }, [pick, el("button", { type: "button", "class": "secondary",
        text: "Merge into this ticket", onclick: function (e) {
          act(e.target, api("POST", "/tickets/" + pick.value + "/merge", { into: d.id }));
        } })]));
    }
    return el("section", { "class": "card", "aria-label": "More" }, nodes);
  }

  function renderTicket() {
    var d = state.detail;
    placeholder.hidden = true;
    pane.hidden = false;
    pane.textContent = "";
    var log = el("div", { id: "transcript", "class": "log", role: "log", "aria-label": "Conversation" },
                 transcriptNodes(d));
    pane.appendChild(header(d));
    pane.appendChild(el("div", { "class": "columns" }, [
      el("div", {}, [el("h3", { text: "Conversation" }),
        el("a", { href: "/agent/tickets/" + d.id + "/history", id: "history-link",
                  text: "The driver's history on every channel" }),
        log, composer(d)]),
      el("div", { id: "context" }, [stationCard(d), driverCard(d), otherCard(d)])]));
    log.scrollTop = log.scrollHeight;
    tick();
  }

  function refreshTicket() {
    // Something changed: redraw, keeping what the agent is typing and the last result.
    var text = document.getElementById("reply-text");
    var typed = text ? text.value : "";
    var focused = document.activeElement;
    var keepFocus = focused && focused.id === "reply-text";
    var kept = ["action-result", "composer-result"].map(function (id) {
      var node = document.getElementById(id);
      return [id, node ? node.textContent : "", node ? node.className : "result"];
    });
    renderTicket();
    var again = document.getElementById("reply-text");
    if (again) { again.value = typed; if (keepFocus) again.focus(); }
    kept.forEach(function (k) {
      var node = document.getElementById(k[0]);
      if (node) { node.textContent = k[1]; node.className = k[2]; }
    });
  }

  // ------------------------------------------------------------ approvals (supervisors)

  var approvals = document.getElementById("approvals");
  function loadApprovals() {
    if (!approvals) return Promise.resolve();
    return api("GET", "/approvals").then(function (rows) {
      approvals.textContent = "";
      if (!rows.length) approvals.appendChild(el("li", { "class": "muted", text: "Nothing waits." }));
      rows.forEach(function (a) {
        var result = el("span", { "class": "result", role: "status" });
        function decide(approve) {
          return function (e) {
            e.target.disabled = true;
            api("POST", "/approvals/" + a.id + "/decision", { approve: approve }).then(function (r) {
              say(result, r.status + (r.credit_note ? " " + r.credit_note : ""), r.status !== "failed");
              loadApprovals();
            }).catch(function (err) { say(result, err.message, false); e.target.disabled = false; });
          };
        }
        approvals.appendChild(el("li", {}, [
          el("strong", { text: a.action.replace("_", " ") + " " + a.amount_incl_vat + " incl. VAT" }),
          el("div", { "class": "muted", text: "ticket #" + a.ticket_id + " · asked by " + a.requested_by +
                                              " · " + (a.params.reason || "") }),
          el("div", { "class": "toolbar" }, [
            el("button", { type: "button", text: "Approve", onclick: decide(true) }),
            el("button", { type: "button", "class": "secondary", text: "Reject", onclick: decide(false) }),
            result])]));
      });
    }).catch(function () { /* shown on the next try */ });
  }

  // ------------------------------------------------------------ start

  var presence = document.getElementById("presence");
  function loadMe() {
    return api("GET", "/me").then(function (me) { presence.checked = !!me.online; });
  }
  presence.addEventListener("change", function () {
    api("POST", "/me/presence", { online: presence.checked }).catch(function () {
      presence.checked = !presence.checked;
    });
  });

  document.getElementById("filters").addEventListener("change", loadQueue);

  Promise.all([
    api("GET", "/agents").then(function (a) { state.agents = a; }),
    api("GET", "/teams").then(function (t) {
      state.teams = t;
      var select = document.getElementById("f-team");
      t.forEach(function (team) { select.appendChild(el("option", { value: team.id, text: team.name })); });
    }),
    api("GET", "/canned-responses").then(function (c) { state.canned = c; }),
    loadMe()
  ]).catch(function () { /* shown where it matters */ }).then(loadQueue).then(loadApprovals);

  setInterval(tick, 1000);
  setInterval(function () { if (!document.hidden) loadQueue(); }, 5000);
  setInterval(function () { if (!document.hidden) loadApprovals(); }, 10000);
  setInterval(function () {
    if (!document.hidden && state.selected) loadTicket(false);
  }, 4000);
  setInterval(function () { if (!document.hidden) loadMe().catch(function () {}); }, 60000);
})();
