defmodule Relaybox.EventodbKit.Client do
  @moduledoc """
  What every `Relaybox.EventodbKit` call takes first: the EventoDB server's
  URL and namespace token, and the Ecto repo whose database holds the
  outbox. It is EventodbKit's `EventodbKit.Client`, with the same options.

      kit = Relaybox.EventodbKit.Client.new("http://localhost:8080",
        token: "ns_...", repo: MyApp.Repo)

  Options: `:token` (the namespace token, sent as `Authorization: Bearer`),
  `:repo` (required), `:namespace` (default: the one the token names),
  `:prefix` (the outbox's table prefix, default `"relaybox_"`), `:outbox`
  (a `Relaybox.Outbox` or its registered name, instead of the repo's own),
  `:timeout` (ms per read, default 10 000). Building a client talks to
  nothing; bad options raise `Relaybox.Error` (`:invalid_config`).
  """

  alias Relaybox.{Error, Native}

  @enforce_keys [:base_url, :repo]
  defstruct [:base_url, :token, :repo, :namespace, :outbox, prefix: "relaybox_", timeout: 10_000]

  @type t :: %__MODULE__{
          base_url: String.t(),
          token: String.t() | nil,
          repo: module(),
          namespace: String.t() | nil,
          outbox: Relaybox.Outbox.outbox() | nil,
          prefix: String.t(),
          timeout: pos_integer()
        }

  @doc "A client of the server at `base_url`; see the module documentation for `opts`."
  @spec new(String.t(), keyword()) :: t()
  def new(base_url, opts \\ []) do
    unless is_binary(base_url) and String.match?(base_url, ~r{\Ahttps?://[^/\s]+}) do
      raise Error.new("base_url must be an http:// or https:// URL, not #{inspect(base_url)}")
    end

    repo = opts[:repo]

    unless is_atom(repo) and repo != nil do
      raise Error.new("repo: is required (your Ecto repo, e.g. MyApp.Repo)")
    end

    token = opts[:token]

    unless is_nil(token) or is_binary(token) do
      raise Error.new("token must be a string")
    end

    namespace = opts[:namespace] || namespace_of(token)

    case check_namespace(namespace, token) do
      :ok -> :ok
      {:error, error} -> raise error
    end

    %__MODULE__{
      base_url: String.trim_trailing(base_url, "/"),
      token: token,
      repo: repo,
      namespace: namespace,
      outbox: opts[:outbox],
      prefix: opts[:prefix] || "relaybox_",
      timeout: opts[:timeout] || 10_000
    }
  end

  @doc """
  The namespace an EventoDB token (`ns_<base64url namespace>_<64 hex>`)
  names, or `nil` for another form.
  """
  @spec namespace_of(String.t() | nil) :: String.t() | nil
  def namespace_of(token) when is_binary(token) do
    with [_, encoded] <- Regex.run(~r/\Ans_([A-Za-z0-9_-]+)_[0-9a-fA-F]{64}\z/, token),
         {:ok, namespace} when namespace != "" <- Base.url_decode64(encoded, padding: false) do
      namespace
    else
      _ -> nil
    end
  end

  def namespace_of(_token), do: nil

  @doc false
  # `:ok` unless the token names another namespace than `namespace`.
  @spec check_namespace(String.t() | nil, String.t() | nil) :: :ok | {:error, Error.t()}
  def check_namespace(namespace, token) do
    case {namespace, namespace_of(token)} do
      {_, nil} ->
        :ok

      {nil, _} ->
        :ok

      {same, same} ->
        :ok

      {_, other} ->
        {:error,
         Error.new(
           "namespace #{inspect(namespace)} does not match the token, which is for namespace " <>
             inspect(other)
         )}
    end
  end

  @doc false
  # One call of the server's RPC API; `{:ok, result}`.
  @spec rpc(t(), String.t(), list()) :: {:ok, term()} | {:error, Error.t()}
  def rpc(%__MODULE__{} = kit, method, args) do
    with {:ok, body} <- Native.json_encode([method | args]) do
      url = String.to_charlist(kit.base_url <> "/rpc")
      if String.starts_with?(kit.base_url, "https:"), do: {:ok, _} = ensure_ssl()

      headers =
        [{~c"accept", ~c"application/json"}] ++
          if kit.token,
            do: [{~c"authorization", String.to_charlist("Bearer " <> kit.token)}],
            else: []

      http_opts = [timeout: kit.timeout, connect_timeout: kit.timeout]

      case :httpc.request(:post, {url, headers, ~c"application/json", body}, http_opts,
             body_format: :binary
           ) do
        {:ok, {{_, 200, _}, _headers, answer}} ->
          Native.json_decode(answer)

        {:ok, {{_, status, _}, _headers, answer}} ->
          {:error, server_error(method, status, answer)}

        {:error, reason} ->
          {:error,
           %Error{
             code: :transport,
             retryable: true,
             message: "eventodb #{method}: #{kit.base_url} cannot be reached (#{inspect(reason)})"
           }}
      end
    end
  end

  defp ensure_ssl, do: Application.ensure_all_started(:ssl)

  defp server_error(method, status, answer) do
    {code, text} =
      case Native.json_decode(answer) do
        {:ok, %{"error" => %{"code" => code} = e}} -> {code, e["message"] || ""}
        _ -> {"HTTP_#{status}", ""}
      end

    if String.starts_with?(code, "AUTH_") do
      Error.new(:invalid_config, "eventodb.token: the server refused it (#{code}: #{text})")
    else
      %Error{
        code: :transport,
        retryable: status >= 500,
        message: "eventodb #{method}: #{code}: #{text}"
      }
    end
  end
end

defimpl Inspect, for: Relaybox.EventodbKit.Client do
  def inspect(kit, _opts) do
    "#Relaybox.EventodbKit.Client<#{kit.base_url} namespace=#{inspect(kit.namespace)} " <>
      "repo=#{inspect(kit.repo)}>"
  end
end
