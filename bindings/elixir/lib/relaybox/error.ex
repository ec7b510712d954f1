defmodule Relaybox.Error do
  @moduledoc """
  The one error of relaybox, returned as `{:error, %Relaybox.Error{}}` and
  raised by the `!` functions.

    * `code`: a stable atom such as `:invalid_topic`, `:invalid_message`,
      `:invalid_config`, `:invalid_value`, `:payload_too_large`,
      `:invalid_header`, `:closed`, `:schema`, `:database`, `:transport`,
      `:handler`, `:timeout`, `:not_found` or `:internal` (a bug or a caught
      panic); and `:rollback`, raised by `Relaybox.Outbox.transaction!/2`
      when your function rolled back with `{:error, reason}`.
    * `message`: a readable explanation (never contains credentials).
    * `retryable`: whether the same call may succeed later.
    * `message_id`: the message concerned, when one is.
  """
  defexception code: :internal, message: "relaybox error", retryable: false, message_id: nil

  @type t :: %__MODULE__{
          code: atom(),
          message: String.t(),
          retryable: boolean(),
          message_id: String.t() | nil
        }

  @doc "An error raised by the Elixir side for bad input (code `:invalid_config` by default)."
  @spec new(atom(), String.t()) :: t()
  def new(code \\ :invalid_config, message), do: %__MODULE__{code: code, message: message}
end
