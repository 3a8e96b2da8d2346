// fetch() wrapper for the JSON API: same-origin cookies, CSRF header on writes,
// JSON bodies, and errors turned into ApiError with the server's message.

/** A failed API call; `message` is fit to show the user. */
export class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

function csrfToken() {
  const cookie = document.cookie
    .split(";")
    .map((part) => part.trim())
    .find((part) => part.startsWith("csrftoken="));
  if (cookie) return decodeURIComponent(cookie.slice("csrftoken=".length));
  return document.querySelector("input[name=csrfmiddlewaretoken]")?.value ?? "";
}

/**
 * Call the API at `path`. Resolves with the parsed JSON body (null for 204);
 * rejects with ApiError carrying {"error": ...} from the server when there is one.
 */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (!["GET", "HEAD"].includes(method)) headers["X-CSRFToken"] = csrfToken();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError("Network error: could not reach the server.");
  }
  if (response.status === 204) return null;
  let data = null;
  if ((response.headers.get("Content-Type") || "").includes("application/json")) {
    try {
      data = await response.json();
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    if (response.status === 403 && !data?.error) {
      throw new ApiError("Your session has expired. Reload the page and log in again.", 403);
    }
    throw new ApiError(data?.error || `The server answered ${response.status}.`, response.status);
  }
  return data;
}

/** A message to show for any error thrown by api() or elsewhere. */
export function errorMessage(error) {
  if (error instanceof ApiError || error?.name === "SocketError") return error.message;
  return error?.message ? `Something went wrong: ${error.message}` : "Something went wrong.";
}
