/*
 * xterm.js under a strict Content-Security-Policy.
 *
 * The page is served with `style-src 'self'` (no 'unsafe-inline'). xterm.js's DOM renderer writes its
 * generated CSS (theme colours, row sizes, cursor, scrollbar) into <style> elements and 24-bit cell
 * colours into style="" attributes; the policy blocks both, which would leave the terminal unstyled
 * and log a violation for every one. The CSS Object Model is not restricted by the policy, so this
 * file, loaded before xterm.js, sends both paths through it:
 *
 *  - document.createElement("style") returns an inert, hidden stand-in element whose text goes into
 *    a constructed stylesheet adopted by the document (document.adoptedStyleSheets);
 *  - element.setAttribute("style", text) sets element.style.cssText instead.
 *
 * Nothing else on this page creates <style> elements or style attributes. The rules xterm.js writes
 * are scoped to its own terminal element, so where the stand-in sits in the tree does not matter.
 */
(function () {
  "use strict";

  if (typeof CSSStyleSheet !== "function" || !("adoptedStyleSheets" in Document.prototype)) {
    return; // an old browser: xterm.js still works, without its generated styles
  }

  var originalCreateElement = document.createElement;
  var originalSetAttribute = Element.prototype.setAttribute;
  var originalRemove = Element.prototype.remove;

  function adopt(sheet) {
    if (document.adoptedStyleSheets.indexOf(sheet) < 0) {
      document.adoptedStyleSheets = document.adoptedStyleSheets.concat([sheet]);
    }
  }

  function unadopt(sheet) {
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter(function (s) { return s !== sheet; });
  }

  function styleStandIn() {
    var element = originalCreateElement.call(document, "cloudshell-style");
    var sheet = new CSSStyleSheet();
    var text = "";
    originalSetAttribute.call(element, "hidden", "");
    function setText(value) {
      text = value == null ? "" : String(value);
      sheet.replaceSync(text);
      adopt(sheet);
    }
    function getText() { return text; }
    Object.defineProperty(element, "textContent", { get: getText, set: setText, configurable: true });
    Object.defineProperty(element, "innerText", { get: getText, set: setText, configurable: true });
    Object.defineProperty(element, "innerHTML", { get: getText, set: setText, configurable: true });
    Object.defineProperty(element, "sheet", {
      get: function () { adopt(sheet); return sheet; },
      configurable: true,
    });
    element.remove = function () {
      unadopt(sheet);
      return originalRemove.call(element);
    };
    return element;
  }

  document.createElement = function (tagName, options) {
    if (typeof tagName === "string" && tagName.toLowerCase() === "style") {
      return styleStandIn();
    }
    return originalCreateElement.call(document, tagName, options);
  };

  Element.prototype.setAttribute = function (name, value) {
    if (typeof name === "string" && name.toLowerCase() === "style" && this.style) {
      this.style.cssText = String(value);
      return undefined;
    }
    return originalSetAttribute.call(this, name, value);
  };
})();
