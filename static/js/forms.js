// Server-rendered forms (sign-up, log-in, account, passwords): after a submit that
// came back with errors, put the keyboard focus on the first field in error, so a
// keyboard or screen-reader user lands where the fix is needed. A form-wide error
// (e.g. "wrong username or password") focuses the form's first field.
const invalid = document.querySelector("main form [aria-invalid='true']");
if (invalid) {
  invalid.focus();
} else {
  const alert = document.querySelector("main form .alert-error");
  alert?.closest("form")?.querySelector("input:not([type=hidden]), select, textarea")?.focus();
}
