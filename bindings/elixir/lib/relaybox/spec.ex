defmodule Relaybox.Spec do
  @moduledoc """
  Message specs and options as the core reads them.

  A message is a map (or keyword list) with the fields of the core's
  `MessageSpec`: `:topic` (required), `:key`, `:type`, exactly one of
  `:payload` (a map, list, number, boolean or `nil` is sent as JSON; a string
  as UTF-8 text), `:payload_base64` or `:payload_text`, and optionally
  `:content_type`, `:headers` (string values), `:delay` (milliseconds or
  `"5s"`, counted from `:created_at`), `:available_at` and `:created_at`
  (RFC 3339 or a `DateTime`; `:created_at` is now by default) and `:id` (a
  UUID). Unknown fields are rejected.

  Before crossing into the NIF, structs are turned into plain maps
  (`DateTime`, `NaiveDateTime`, `Date` and `Time` into ISO 8601 strings) so
  that serializers can return schemas and timestamps directly.
  """

  @doc "A spec or options as JSON-ready terms (keyword lists become maps)."
  @spec normalize(term()) :: term()
  def normalize(%DateTime{} = t), do: DateTime.to_iso8601(t)
  def normalize(%NaiveDateTime{} = t), do: NaiveDateTime.to_iso8601(t)
  def normalize(%Date{} = t), do: Date.to_iso8601(t)
  def normalize(%Time{} = t), do: Time.to_iso8601(t)

  def normalize(%_{} = struct) do
    struct |> Map.from_struct() |> Map.delete(:__meta__) |> normalize()
  end

  def normalize(map) when is_map(map), do: Map.new(map, fn {k, v} -> {k, normalize(v)} end)

  def normalize([{key, _} | _] = list) when is_atom(key) do
    if Keyword.keyword?(list), do: list |> Map.new() |> normalize(), else: list
  end

  def normalize(list) when is_list(list), do: Enum.map(list, &normalize/1)
  def normalize(other), do: other

  @doc "SQL parameters as the NIF takes them (`DateTime` becomes `{:timestamp, iso}`)."
  @spec params(list()) :: list()
  def params(params) when is_list(params), do: Enum.map(params, &param/1)

  defp param(%DateTime{} = t), do: {:timestamp, DateTime.to_iso8601(t)}
  defp param(%NaiveDateTime{} = t), do: {:timestamp, NaiveDateTime.to_iso8601(t) <> "Z"}
  defp param(%Date{} = d), do: Date.to_iso8601(d)
  defp param({:json, value}), do: {:json, normalize(value)}
  defp param(%_{} = struct), do: {:json, normalize(struct)}
  defp param(map) when is_map(map), do: {:json, normalize(map)}
  defp param(other), do: other

  @doc "A message spec (map, keyword list or JSON text) ready for the NIF."
  @spec message(map() | keyword() | String.t()) :: map() | String.t()
  def message(spec) when is_binary(spec), do: spec
  def message(spec) when is_list(spec), do: spec |> Map.new() |> message()
  def message(spec) when is_map(spec), do: normalize(spec)

  @doc """
  A transport setting: `:database` (the default), or `{name, opts}` /
  `[{name, opts}]` naming a transport and its settings, e.g.
  `{:kafka, bootstrap_servers: "localhost:9092"}`,
  `{:rabbitmq, url: "amqp://localhost"}` or `{:redis, url: "redis://localhost"}`;
  or `{:routes, [[topics: ["orders.*"], transport: {:kafka, ...}, destination:
  "prod.{topic}"], ...]}`, each topic to the first route that matches it.
  """
  @spec transport(term()) :: String.t() | map()
  def transport(nil), do: "database"
  def transport(:database), do: "database"
  def transport("database"), do: "database"

  def transport({:routes, routes}) when is_list(routes),
    do: %{"routes" => Enum.map(routes, &route/1)}

  def transport({name, opts}) when is_atom(name),
    do: %{Atom.to_string(name) => normalize(Map.new(opts))}

  def transport([{name, opts}]) when is_atom(name), do: transport({name, opts})
  def transport(%{} = map), do: normalize(map)
  def transport(other), do: other

  # One route: `topics`, an optional `transport` in any form `transport/1`
  # takes, and an optional `destination`.
  defp route(route) when is_list(route) or is_map(route) do
    {target, rest} = route |> Map.new() |> Map.pop(:transport)
    rest |> normalize() |> Map.put("transport", transport(target))
  end

  defp route(other), do: other
end
