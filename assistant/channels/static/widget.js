/* ChargeDesk chat widget. Embed with one tag:
 *   <script src="https://your.host/chat/widget.js" data-lang="sv" defer></script>
 * Options (data-*): lang "sv" | "en"; open "true" to start opened; title.
 * Talks to the server it was loaded from: POST /chat/session, /webhooks/rest/webhook (Rasa's
 * REST channel), /chat/verify/start|check (sign-in with a code), and the /chat/ws push socket.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.__chargedeskWidget) return;
  window.__chargedeskWidget = true;

  var base = new URL(script.src, document.baseURI);
  var origin = base.origin;
  var wsOrigin = origin.replace(/^http/, "ws");
  var opts = script.dataset || {};
  var lang = opts.lang === "en" ? "en" : "sv";
  var STORE = "chargedesk-chat";

  var TEXT = {
    sv: {
      title: "Laddhjälpen", open: "Chatta med oss", close: "Stäng chatten",
      other: "English", otherLang: "en", log: "Konversation",
      input: "Skriv ditt meddelande", send: "Skicka",
      placeholder: "Fråga om pris, laddare, betalning…",
      signIn: "Logga in", signOut: "Logga ut", signedIn: "Inloggad",
      contact: "E-post eller mobilnummer", sendCode: "Skicka kod",
      code: "Kod", verify: "Logga in med koden", cancel: "Avbryt",
      codeSent: "Om adressen hör till ett konto har vi skickat en kod till den. Den gäller i 10 minuter.",
      codeSentSms: "Om numret hör till ett konto har vi skickat en kod till det med sms. Den gäller i 10 minuter.",
      codeSentEmail: "Om numret hör till ett konto har vi mejlat en kod till kontots e-postadress (inte sms). Den gäller i 10 minuter.",
      optedOut: "Numret har stängt av sms från oss (STOP), så vi har inte skickat någon kod. Svara START på ett av våra sms för att få sms igen, eller logga in med din e-postadress.",
      badCode: "Koden stämmer inte eller har gått ut.",
      badContact: "Skriv en e-postadress eller ett mobilnummer.",
      tooMany: "För många försök. Vänta en stund och försök igen.",
      welcome: "Hej! Jag kan svara på pris, lediga laddare och var du kan ladda. Logga in för frågor om ditt konto.",
      you: "Du", bot: "Laddhjälpen", quick: "Snabbsvar",
      offline: "Kunde inte nå servern. Försök igen.", nowSignedIn: "Du är inloggad.",
      skip: "Hoppa till meddelandefältet"
    },
    en: {
      title: "Charging help", open: "Chat with us", close: "Close chat",
      other: "Svenska", otherLang: "sv", log: "Conversation",
      input: "Type your message", send: "Send",
      placeholder: "Ask about prices, chargers, payment…",
      signIn: "Sign in", signOut: "Sign out", signedIn: "Signed in",
      contact: "E-mail or mobile number", sendCode: "Send code",
      code: "Code", verify: "Sign in with the code", cancel: "Cancel",
      codeSent: "If the address belongs to an account, we have sent a code to it. It is valid for 10 minutes.",
      codeSentSms: "If the number belongs to an account, we have sent a code to it by text. It is valid for 10 minutes.",
      codeSentEmail: "If the number belongs to an account, we have e-mailed a code to the account's e-mail address (not by text). It is valid for 10 minutes.",
      optedOut: "The number has opted out of texts from us (STOP), so we haven't sent a code. Reply START to one of our texts to get texts again, or sign in with your e-mail address.",
      badCode: "The code is wrong or has expired.",
      badContact: "Enter an e-mail address or a mobile number.",
      tooMany: "Too many attempts. Wait a while and try again.",
      welcome: "Hi! I can tell you prices, which chargers are free and where to charge. Sign in for questions about your account.",
      you: "You", bot: "Charging help", quick: "Quick replies",
      offline: "Could not reach the server. Please try again.", nowSignedIn: "You are signed in.",
      skip: "Skip to the message field"
    }
  };
  function t(key) { return TEXT[lang][key]; }

  // ------------------------------------------------------------ styles

  var css = document.createElement("link");
  css.rel = "stylesheet";
  css.href = new URL("widget.css", base).href;
  document.head.appendChild(css);

  // ------------------------------------------------------------ DOM

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "class") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }
  var uid = "cdw-" + Math.random().toString(36).slice(2, 8);

  var root = el("div", { "class": "cdw", id: uid });
  var launcher = el("button", { type: "button", "class": "cdw-launcher", "aria-expanded": "false",
    "aria-controls": uid + "-panel" });
  var panel = el("section", { "class": "cdw-panel", id: uid + "-panel", role: "dialog",
    "aria-modal": "false", "aria-labelledby": uid + "-title", hidden: "" });
  var title = el("h2", { id: uid + "-title", "class": "cdw-title" });
  var langButton = el("button", { type: "button", "class": "cdw-link" });
  var closeButton = el("button", { type: "button", "class": "cdw-close" });
  var header = el("header", { "class": "cdw-header" }, [title, langButton, closeButton]);

  var log = el("div", { "class": "cdw-log", role: "log", "aria-live": "polite",
    "aria-relevant": "additions", tabindex: "0", id: uid + "-log" });

  var account = el("div", { "class": "cdw-account" });
  var accountState = el("span", { "class": "cdw-account-state" });
  var signInButton = el("button", { type: "button", "class": "cdw-link",
    "aria-expanded": "false", "aria-controls": uid + "-signin" });
  account.appendChild(accountState);
  account.appendChild(signInButton);

  var signin = el("div", { "class": "cdw-signin", id: uid + "-signin", hidden: "" });
  var contactForm = el("form", { "class": "cdw-form", novalidate: "" });
  var contactLabel = el("label", { "for": uid + "-contact" });
  var contactInput = el("input", { id: uid + "-contact", type: "text", autocomplete: "email",
    inputmode: "email", required: "", maxlength: "254" });
  var contactSubmit = el("button", { type: "submit" });
  contactForm.appendChild(contactLabel);
  contactForm.appendChild(el("div", { "class": "cdw-row" }, [contactInput, contactSubmit]));

  var codeForm = el("form", { "class": "cdw-form", novalidate: "", hidden: "" });
  var codeLabel = el("label", { "for": uid + "-code" });
  var codeInput = el("input", { id: uid + "-code", type: "text", autocomplete: "one-time-code",
    inputmode: "numeric", pattern: "[0-9]*", maxlength: "6", required: "" });
  var codeSubmit = el("button", { type: "submit" });
  codeForm.appendChild(codeLabel);
  codeForm.appendChild(el("div", { "class": "cdw-row" }, [codeInput, codeSubmit]));
  var signinStatus = el("p", { "class": "cdw-status", role: "status", "aria-live": "polite" });
  var cancelButton = el("button", { type: "button", "class": "cdw-link" });
  [contactForm, codeForm, signinStatus, cancelButton].forEach(function (n) { signin.appendChild(n); });

  var form = el("form", { "class": "cdw-compose" });
  var inputLabel = el("label", { "for": uid + "-input", "class": "cdw-sr" });
  var input = el("input", { id: uid + "-input", type: "text", autocomplete: "off",
    maxlength: "5000", enterkeyhint: "send" });
  var sendButton = el("button", { type: "submit" });
  form.appendChild(inputLabel);
  form.appendChild(input);
  form.appendChild(sendButton);

  [header, account, signin, log, form].forEach(function (n) { panel.appendChild(n); });
  root.appendChild(launcher);
  root.appendChild(panel);

  function applyText() {
    root.setAttribute("lang", lang);
    launcher.textContent = t("open");
    title.textContent = opts.title || t("title");
    langButton.textContent = t("other");
    langButton.setAttribute("lang", t("otherLang"));
    closeButton.setAttribute("aria-label", t("close"));
    closeButton.textContent = "\u00d7";
    log.setAttribute("aria-label", t("log"));
    contactLabel.textContent = t("contact");
    contactSubmit.textContent = t("sendCode");
    codeLabel.textContent = t("code");
    codeSubmit.textContent = t("verify");
    cancelButton.textContent = t("cancel");
    inputLabel.textContent = t("input");
    input.placeholder = t("placeholder");
    sendButton.textContent = t("send");
    renderAccount();
  }

  // ------------------------------------------------------------ state

  var state = load() || {};
  function load() {
    try { return JSON.parse(sessionStorage.getItem(STORE) || "null"); } catch (e) { return null; }
  }
  function save() {
    try { sessionStorage.setItem(STORE, JSON.stringify(state)); } catch (e) { /* private mode */ }
  }
  if (state.lang === "sv" || state.lang === "en") lang = state.lang;

  function renderAccount() {
    if (state.driverId) {
      accountState.textContent = t("signedIn");
      signInButton.textContent = t("signOut");
    } else {
      accountState.textContent = "";
      signInButton.textContent = t("signIn");
    }
  }

  function api(path, body) {
    var headers = { "Content-Type": "application/json" };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    return fetch(origin + path, { method: "POST", headers: headers,
      body: JSON.stringify(body || {}), credentials: "omit" });
  }

  var ready = null;
  function ensureSession() {
    if (state.token && state.expiresAt * 1000 > Date.now() + 60000) return Promise.resolve();
    if (ready) return ready;
    state = { lang: lang };
    ready = api("/chat/session").then(function (r) {
      if (!r.ok) throw new Error("session " + r.status);
      return r.json();
    }).then(function (s) {
      state.token = s.token; state.sender = s.sender; state.expiresAt = s.expires_at;
      state.driverId = null; save(); renderAccount(); connect();
    }).finally(function () { ready = null; });
    return ready;
  }

  // ------------------------------------------------------------ messages

  // Every bot message arrives twice when the socket is up: in the REST answer and as a push.
  // Whichever comes first is shown; the other is matched against it and dropped.
  var seen = { rest: {}, ws: {} };
  function fresh(source, msg) {
    var key = JSON.stringify([msg.text || "", msg.buttons || [], msg.image || ""]);
    var other = source === "rest" ? seen.ws : seen.rest;
    var now = Date.now();
    [seen.rest, seen.ws].forEach(function (m) {
      Object.keys(m).forEach(function (k) {
        m[k] = m[k].filter(function (at) { return now - at < 30000; });
        if (!m[k].length) delete m[k];
      });
    });
    if (other[key] && other[key].length) { other[key].shift(); return false; }
    (seen[source][key] = seen[source][key] || []).push(now);
    return true;
  }

  function addLine(who, text, cls) {
    var item = el("div", { "class": "cdw-msg " + cls });
    item.appendChild(el("span", { "class": "cdw-sr", text: who + ": " }));
    var bubble = el("p", { "class": "cdw-text" });
    bubble.textContent = text;
    item.appendChild(bubble);
    log.appendChild(item);
    log.scrollTop = log.scrollHeight;
    return item;
  }

  function showBot(msg, source) {
    if (!fresh(source, msg)) return;
    var item = addLine(t("bot"), msg.text || "", "cdw-bot");
    if (msg.buttons && msg.buttons.length) {
      var group = el("div", { "class": "cdw-quick", role: "group", "aria-label": t("quick") });
      msg.buttons.forEach(function (b) {
        var button = el("button", { type: "button", "class": "cdw-chip", text: b.title });
        button.addEventListener("click", function () {
          group.remove();
          send(b.payload || b.title, b.title);
          input.focus();
        });
        group.appendChild(button);
      });
      item.appendChild(group);
    }
  }

  function system(text) { addLine("", text, "cdw-system"); }

  var busy = false;
  function send(payload, shown) {
    if (!payload || busy) return Promise.resolve();
    busy = true;
    sendButton.disabled = true;
    addLine(t("you"), shown || payload, "cdw-user");
    return ensureSession().then(function () {
      return api("/webhooks/rest/webhook", { sender: state.sender, message: payload,
        metadata: { language: lang } });
    }).then(function (r) {
      if (r.status === 401) { state.token = null; save(); throw new Error("expired"); }
      if (!r.ok) throw new Error("webhook " + r.status);
      return r.json();
    }).then(function (replies) {
      replies.forEach(function (m) { showBot(m, "rest"); });
    }).catch(function () { system(t("offline")); })
      .finally(function () { busy = false; sendButton.disabled = false; });
  }

  // ------------------------------------------------------------ pushes

  var socket = null, retry = 1000;
  function connect() {
    if (!state.token || !("WebSocket" in window)) return;
    if (socket) socket.close();
    var s = new WebSocket(wsOrigin + "/chat/ws?token=" + encodeURIComponent(state.token));
    socket = s;
    s.onmessage = function (e) {
      try { showBot(JSON.parse(e.data), "ws"); } catch (err) { /* not ours */ }
    };
    s.onopen = function () { retry = 1000; };
    s.onclose = function () {
      if (socket !== s) return;
      socket = null;
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    };
  }

  // ------------------------------------------------------------ sign-in

  function showSignin(open) {
    signin.hidden = !open;
    signInButton.setAttribute("aria-expanded", String(open));
    if (open) {
      contactForm.hidden = false; codeForm.hidden = true; signinStatus.textContent = "";
      contactInput.focus();
    }
  }

  signInButton.addEventListener("click", function () {
    if (state.driverId) {  // sign out: a new anonymous conversation
      state = { lang: lang }; save(); renderAccount();
      ensureSession().then(function () { input.focus(); });
      return;
    }
    showSignin(signin.hidden);
  });
  cancelButton.addEventListener("click", function () { showSignin(false); signInButton.focus(); });

  // The server's reason for sending no code, in the widget's language when it is one we
  // know (a number that sent STOP, with no e-mail address to send to instead).
  function refusal(detail) {
    detail = typeof detail === "string" ? detail : "";
    return !detail || /opted out/i.test(detail) ? t("optedOut") : detail;
  }

  contactForm.addEventListener("submit", function (e) {
    e.preventDefault();
    var contact = contactInput.value.trim();
    if (!contact) { signinStatus.textContent = t("badContact"); contactInput.focus(); return; }
    contactSubmit.disabled = true;
    ensureSession().then(function () {
      return api("/chat/verify/start", { contact: contact });
    }).then(function (r) {
      if (r.status === 422) { signinStatus.textContent = t("badContact"); contactInput.focus(); return; }
      if (r.status === 429) { signinStatus.textContent = t("tooMany"); return; }
      if (r.status === 409) {  // nothing sent: the server says why
        return r.json().catch(function () { return {}; }).then(function (b) {
          signinStatus.textContent = refusal(b && b.detail);
          contactInput.select(); contactInput.focus();
        });
      }
      if (!r.ok) throw new Error("verify " + r.status);
      return r.json().then(function (v) {
        contactForm.hidden = true; codeForm.hidden = false;
        signinStatus.textContent = contact.indexOf("@") >= 0 ? t("codeSent")
          : t(v.via === "sms" ? "codeSentSms" : "codeSentEmail");
        codeInput.value = ""; codeInput.focus();
      });
    }).catch(function () { signinStatus.textContent = t("offline"); })
      .finally(function () { contactSubmit.disabled = false; });
  });

  codeForm.addEventListener("submit", function (e) {
    e.preventDefault();
    codeSubmit.disabled = true;
    api("/chat/verify/check", { code: codeInput.value.trim() }).then(function (r) {
      if (r.status === 400 || r.status === 422) {
        signinStatus.textContent = t("badCode"); codeInput.select(); codeInput.focus(); return;
      }
      if (!r.ok) throw new Error("check " + r.status);
      return r.json().then(function (s) {
        state.token = s.token; state.expiresAt = s.expires_at; state.driverId = s.driver_id;
        save(); connect(); renderAccount(); showSignin(false);
        system(t("nowSignedIn"));
        // A case an agent already has (from another channel) follows the driver here.
        (s.messages || []).forEach(function (m) { showBot(m, "rest"); });
        input.focus();
      });
    }).catch(function () { signinStatus.textContent = t("offline"); })
      .finally(function () { codeSubmit.disabled = false; });
  });

  // ------------------------------------------------------------ open, close, language

  function setOpen(open) {
    panel.hidden = !open;
    launcher.setAttribute("aria-expanded", String(open));
    launcher.hidden = open;
    if (open) {
      if (!log.childNodes.length) system(t("welcome"));
      ensureSession().catch(function () { system(t("offline")); });
      input.focus();
    }
  }
  launcher.addEventListener("click", function () { setOpen(true); });
  closeButton.addEventListener("click", function () { setOpen(false); launcher.focus(); });
  panel.addEventListener("keydown", function (e) {
    if (e.key === "Escape") { setOpen(false); launcher.focus(); }
  });
  langButton.addEventListener("click", function () {
    lang = t("otherLang"); state.lang = lang; save(); applyText(); langButton.focus();
  });
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    send(text);
    input.focus();
  });

  function mount() {
    document.body.appendChild(root);
    applyText();
    if (state.token) connect();
    if (opts.open === "true") setOpen(true);
  }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
