// Swagger UI for this server's OpenAPI schema (an external script: the page's CSP allows no
// inline one). With API keys set the schema needs one: the key the web UI was given in this
// tab is sent with every request Swagger UI makes (the schema's and "Try it out"'s).
const key = sessionStorage.getItem("colqwen-key") || "";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  requestInterceptor: (request) => {
    if (key && !request.headers.Authorization) request.headers.Authorization = `Bearer ${key}`;
    return request;
  },
});
