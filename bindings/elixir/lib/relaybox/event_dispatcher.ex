defmodule Relaybox.EventDispatcher do
  @moduledoc """
  Turns a message's type and data into a struct of your own: `register/2`
  names the struct of each event type, and `dispatch/3` builds and validates
  the struct from the data and calls your function with it. The API is
  EventodbKit's `use EventodbKit.EventDispatcher`.

      defmodule MyApp.Events do
        use Relaybox.EventDispatcher

        register "UserCreated", MyApp.Events.UserCreated
        register "OrderPlaced", MyApp.Events.OrderPlaced
      end

      def handle_message(message, _state) do
        MyApp.Events.dispatch(message["type"], message["data"], &handle_event/2)
      end

      defp handle_event(MyApp.Events.UserCreated, event), do: IO.puts(event.user_id)

  The struct is built from the data's keys (strings or atoms) matching its
  fields; missing `@enforce_keys` are an error. When the module defines
  `validate/1` (returning `{:ok, struct}`, `:ok` or `{:error, reason}`), it is
  called on the struct. Errors are `{:error, {:invalid_event, type, reason}}`
  and, for an unregistered type, `{:error, {:unknown_event, type}}`: returned
  from a consumer's handler, they retry and then dead-letter the message.
  """

  @doc false
  defmacro __using__(_opts) do
    quote do
      import Relaybox.EventDispatcher, only: [register: 2]
      Module.register_attribute(__MODULE__, :relaybox_events, accumulate: true)
      @before_compile Relaybox.EventDispatcher
    end
  end

  @doc "Registers `module` (a struct) as the event type `type`."
  defmacro register(type, module) do
    quote do
      @relaybox_events {unquote(type), unquote(module)}
    end
  end

  @doc false
  defmacro __before_compile__(env) do
    events = env.module |> Module.get_attribute(:relaybox_events) |> Map.new()

    quote do
      @doc "The registered event types and their modules."
      def events, do: unquote(Macro.escape(events))

      @doc "Validates `data` into the struct registered for `type` and calls `fun.(module, struct)`."
      def dispatch(type, data, fun),
        do: Relaybox.EventDispatcher.dispatch(events(), type, data, fun)
    end
  end

  @doc "Dispatches with an explicit registry (`%{type => module}`)."
  @spec dispatch(%{String.t() => module()}, String.t(), map(), (module(), struct() -> result)) ::
          result | {:error, term()}
        when result: term()
  def dispatch(events, type, data, fun) when is_function(fun, 2) do
    case Map.fetch(events, type) do
      {:ok, module} ->
        case build(module, data) do
          {:ok, event} -> fun.(module, event)
          {:error, reason} -> {:error, {:invalid_event, type, reason}}
        end

      :error ->
        {:error, {:unknown_event, type}}
    end
  end

  @doc "Builds and validates the struct `module` from `data`."
  @spec build(module(), map()) :: {:ok, struct()} | {:error, String.t()}
  def build(module, data) when is_map(data) do
    Code.ensure_loaded(module)

    fields =
      module.__struct__()
      |> Map.keys()
      |> Enum.reject(&(&1 == :__struct__))

    attrs =
      for field <- fields,
          value = fetch(data, field),
          value != :missing,
          do: {field, elem(value, 1)}

    try do
      struct!(module, attrs)
    rescue
      e in ArgumentError -> {:error, Exception.message(e)}
    else
      event -> validate(module, event)
    end
  end

  def build(_module, data), do: {:error, "data must be a map, got #{inspect(data)}"}

  defp fetch(data, field) do
    case Map.fetch(data, Atom.to_string(field)) do
      {:ok, v} ->
        {:ok, v}

      :error ->
        case Map.fetch(data, field) do
          {:ok, v} -> {:ok, v}
          :error -> :missing
        end
    end
  end

  defp validate(module, event) do
    if function_exported?(module, :validate, 1) do
      case module.validate(event) do
        :ok -> {:ok, event}
        {:ok, %^module{} = valid} -> {:ok, valid}
        {:error, reason} -> {:error, if(is_binary(reason), do: reason, else: inspect(reason))}
        other -> {:error, "validate/1 returned #{inspect(other)}"}
      end
    else
      {:ok, event}
    end
  end
end
