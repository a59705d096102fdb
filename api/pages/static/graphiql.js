// GraphiQL at /graphql, with the explorer plugin and subscriptions over WebSocket
// (graphql-transport-ws). The bearer token goes under "Headers": {"Authorization": "Bearer ..."};
// GraphiQL sends those headers with every HTTP request and in connection_init for subscriptions.
// No inline script: the page's Content-Security-Policy allows scripts from this service only.
"use strict";
(function () {
  const element = document.getElementById("graphiql");
  const url = new URL(element.dataset.graphqlUrl, window.location.href);
  const subscriptionUrl = new URL(url);
  subscriptionUrl.protocol = url.protocol === "https:" ? "wss:" : "ws:";

  // ?q= and ?variables= share a query (not ?query=: GET /graphql?query=... runs it, as GraphQL over
  // HTTP says); headers (the token) never go into the address.
  const parameters = new URLSearchParams(window.location.search);

  function remember(name, value) {
    if (value) {
      parameters.set(name, value);
    } else {
      parameters.delete(name);
    }
    const search = parameters.toString();
    history.replaceState(null, "", search ? "?" + search : window.location.pathname);
  }

  const fetcher = GraphiQL.createFetcher({
    url: url.toString(),
    subscriptionUrl: subscriptionUrl.toString(),
  });
  const explorer = GraphiQLPluginExplorer.explorerPlugin();

  function App() {
    return React.createElement(GraphiQL, {
      fetcher: fetcher,
      plugins: [explorer],
      defaultQuery: "# Add {\"Authorization\": \"Bearer <token>\"} under Headers, then run:\n{\n  me {\n    username\n    role\n  }\n}\n",
      query: parameters.get("q") || undefined,
      variables: parameters.get("variables") || undefined,
      onEditQuery: function (value) {
        remember("q", value);
      },
      onEditVariables: function (value) {
        remember("variables", value);
      },
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
      inputValueDeprecation: true,
    });
  }

  ReactDOM.createRoot(element).render(React.createElement(App));
})();
