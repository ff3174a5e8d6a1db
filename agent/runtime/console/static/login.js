// The sign-in form: say so when the token given was wrong (the server redirects with ?wrong=1).
"use strict";
if (new URLSearchParams(location.search).has("wrong")) {
  document.getElementById("wrong").hidden = false;
}
