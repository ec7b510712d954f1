defmodule Mix.Tasks.Relaybox.Gen.Serializer do
  @shortdoc "Generates a message serializer for Relaybox.Producer"
  @moduledoc """
  Writes a serializer module for a struct, as `Relaybox.Producer` expects it.

      mix relaybox.gen.serializer MyApp.MessageSerializers MyApp.Accounts.User [--fields id,name] [--path lib/...]

  The module is `<serializers>.<last part of the struct module>` (here
  `MyApp.MessageSerializers.User`), written under `lib/` by default.
  """
  use Mix.Task

  @impl Mix.Task
  def run(args) do
    {opts, positional, _} = OptionParser.parse(args, strict: [fields: :string, path: :string])

    {serializers, schema} =
      case positional do
        [serializers, schema] -> {serializers, schema}
        _ -> Mix.raise("usage: mix relaybox.gen.serializer SERIALIZERS_NAMESPACE STRUCT_MODULE")
      end

    short = schema |> String.split(".") |> List.last()
    module = "#{serializers}.#{short}"
    fields = (opts[:fields] || "id") |> String.split(",", trim: true) |> Enum.map(&String.trim/1)
    var = Macro.underscore(short)
    map = Enum.map_join(fields, ", ", &"#{&1}: #{var}.#{&1}")
    route_base = var
    path = opts[:path] || Path.join("lib", Macro.underscore(module) <> ".ex")
    File.mkdir_p!(Path.dirname(path))

    File.write!(path, """
    defmodule #{module} do
      @moduledoc "Message serializer of `#{schema}` for `Relaybox.Producer`."

      @doc "Supported message versions."
      def message_versions, do: [1]

      @doc "Payload of a `created` message."
      def created(#{var}, _version), do: %{#{map}}

      @doc "Payload of an `updated` message."
      def updated(#{var}, _version), do: %{#{map}}

      @doc "Payload of a `destroyed` message."
      def destroyed(#{var}, _version), do: %{id: #{var}.id}

      @doc "The partition key: messages of one key are delivered in order."
      def partition_key(#{var}), do: to_string(#{var}.id)

      @doc "The route (`to` field) of a message for `event`."
      def message_route(event), do: "#{route_base}/\#{event}"
    end
    """)

    Mix.shell().info("* creating #{path}")
    path
  end
end
